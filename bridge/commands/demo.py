"""`warren demo`: the whole story on private brokers, printing what it verified.

Start broker A, publish a sample with every property and header type to a queue and a stream, archive
both into ./warren-archive while a second batch follows, note the time T between the batches, show
`warren ls`, verify the archive, then restore T into a fresh broker B with its topology and check that
exactly the first batch came back, in order and byte-identical, in a queue with the same arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import decimal
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.archiver.service import run_archiver
from bridge.commands.ls import list_archive, summarize
from bridge.commands.verify import verify_uri
from bridge.config import config_from_args
from bridge.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError
from bridge.harness.scratch import Broker, private_broker
from bridge.replay.service import ReplayOptions, run_replay
from protocol import Message, connect
from protocol.loop import run
from protocol.management import ManagementClient
from sinks import open_sink

log = logging.getLogger("warren.demo")

QUEUE = "warren.demo.orders"
QUEUE_ARGUMENTS = {"x-max-length": 100_000, "x-queue-type": "classic"}
STREAM = "warren.demo.events"
MARKER = ".warren-demo"


@dataclass
class Checks:
    """PASS/FAIL lines printed as they happen, and the closing tally."""

    out: Callable[[str], None] = print
    results: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok))
        self.out(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))
        return ok

    @property
    def failed(self) -> int:
        return sum(1 for _, ok in self.results if not ok)

    def summary(self) -> str:
        return f"{len(self.results) - self.failed} passed, {self.failed} failed"


def sample_messages(count: int, start: int = 0) -> list[Message]:
    """Messages that exercise every basic property, every header field type and multi-frame bodies."""
    messages = []
    for i in range(start, start + count):
        headers: dict[str, Any] = {
            "seq": i,
            "text": "héllo ✓",
            "flag": bool(i % 2),
            "big": 2**40 + i,
            "neg": -i,
            "dec": decimal.Decimal("12.34"),
            "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "raw": bytearray(i.to_bytes(4, "big")),
            "nothing": None,
            "nested": {"list": [1, "two", {"three": 3}], "empty": {}},
        }
        body = b"" if i % 50 == 0 else (b"%06d " % i) * (1 + i % 40)
        if i % 250 == 7:
            body = bytes(range(256)) * 1200  # spans several frames
        properties = {
            "content_type": "application/octet-stream",
            "content_encoding": "identity",
            "headers": headers,
            "delivery_mode": 2,
            "priority": i % 10,
            "correlation_id": f"corr-{i}",
            "reply_to": "replies",
            "expiration": "3600000",
            "message_id": f"msg-{i}",
            "timestamp": dt.datetime.fromtimestamp(1_700_000_000 + i, dt.UTC),
            "message_type": "demo.sample",
            "user_id": "guest",
            "app_id": "warren-demo",
        }
        messages.append(Message.build(body, properties, routing_key=QUEUE))
    return messages


def stream_messages(count: int, start: int = 0) -> list[Message]:
    # A stream stores AMQP 1.0 messages: simple header values only (3.10 refuses nested tables).
    return [
        Message.build(b"event %d" % i, {"message_id": f"evt-{i}", "headers": {"seq": i}}, routing_key=STREAM)
        for i in range(start, start + count)
    ]


async def publish(uri: str, queue_messages: list[Message], stream_messages_: list[Message]) -> None:
    conn = await connect(uri, name="warren-demo publisher")
    try:
        ch = await conn.channel()
        await ch.queue_declare(QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
        await ch.queue_declare(STREAM, durable=True, arguments={"x-queue-type": "stream"})
        await ch.confirm_select(window=500)
        for message in queue_messages:
            await ch.publish_message(message, mandatory=True)
        for message in stream_messages_:
            await ch.publish_message(message, mandatory=True)
        await ch.wait_for_confirms()
    finally:
        await conn.close()


async def wait_archived(archive: str, want: int, timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        async with open_sink(archive) as sink:
            counts = {s.source.name: s.records for s in await summarize(sink)}
        if counts.get(QUEUE, 0) >= want and counts.get(STREAM, 0) >= want:
            break
        await asyncio.sleep(0.5)
    return counts


async def consume(uri: str, queue: str, count: int, arguments: dict[str, Any] | None = None) -> list[Message]:
    conn = await connect(uri, name="warren-demo witness")
    try:
        ch = await conn.channel()
        await ch.qos(500)
        received: list[Message] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(message: Message) -> None:
            received.append(message)
            ch.ack(message.delivery_tag, multiple=True)
            if len(received) >= count and not done.done():
                done.set_result(None)

        tag = await ch.consume(queue, on_message, arguments=arguments)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, 30)
        await asyncio.sleep(0.3)  # a surplus (a wrong replay) would arrive now
        await ch.cancel(tag)
        return received
    finally:
        await conn.close()


def prepare_archive_dir(path: Path) -> str:
    if path.exists():
        if not (path / MARKER).exists():
            raise ConfigError(f"{path} exists and was not made by the demo: remove it or give --archive elsewhere")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by `warren demo`; removed by its next run\n")
    return str(path.resolve())


def same(sent: list[Message], got: list[Message]) -> bool:
    return len(sent) == len(got) and all(
        a.body == b.body and a.raw_properties == b.raw_properties for a, b in zip(sent, got, strict=True)
    )


async def run_demo(broker_uri: str | None, count: int, archive_dir: Path) -> Checks:
    checks = Checks()
    archive = prepare_archive_dir(archive_dir)
    first_q, second_q = sample_messages(count), sample_messages(count, start=count)
    first_s, second_s = stream_messages(count), stream_messages(count, start=count)
    given = Broker(broker_uri, "") if broker_uri else None
    async with private_broker("A", given) as a:
        await publish(a.amqp_uri, first_q, first_s)
        config = config_from_args(
            a.amqp_uri,
            [QUEUE],
            [STREAM],
            [archive],
            management_uri=a.management_uri or None,
            prefetch_count=200,
            segment_max_age=1,
        )
        stopping = asyncio.Event()
        archiver = asyncio.create_task(run_archiver(config, stopping=stopping))
        try:
            counts = await wait_archived(archive, count)
            checks.check(
                f"first batch archived ({count} queue, {count} stream messages)",
                counts == {QUEUE: count, STREAM: count},
                str(counts),
            )
            await asyncio.sleep(1.1)  # T falls cleanly between the batches
            t = time.time_ns()
            await asyncio.sleep(1.1)
            await publish(a.amqp_uri, second_q, second_s)
            counts = await wait_archived(archive, 2 * count)
            checks.check("second batch archived", counts == {QUEUE: 2 * count, STREAM: 2 * count}, str(counts))
        finally:
            stopping.set()
            await archiver
        print()
        print(f"$ warren ls {archive}")
        print(await list_archive(archive, as_json=False))
        print()
        checks.check("warren verify: every segment and checksum sound, sequences continuous", await verify_uri(archive))
    async with private_broker("B", None) as b:
        at = dt.datetime.fromtimestamp(t / 1e9, dt.UTC).isoformat().replace("+00:00", "Z")
        print(f"\n$ warren replay --archive {archive} --target B --at {at} --definitions")
        outcomes = await run_replay(
            ReplayOptions(archive, b.amqp_uri, until_ns=t, definitions=True, target_management_uri=b.management_uri)
        )
        checks.check("replay completed", all(o.error is None for o in outcomes))
        got_q = await consume(b.amqp_uri, QUEUE, count)
        checks.check(f"queue on B holds exactly the {count} messages up to T", len(got_q) == count, f"{len(got_q)}")
        checks.check("queue messages in order, properties and bodies byte-identical", same(first_q, got_q))
        got_s = await consume(b.amqp_uri, STREAM, count, {"x-stream-offset": "first"})
        checks.check(f"stream on B holds exactly the {count} messages up to T", len(got_s) == count, f"{len(got_s)}")
        checks.check(
            "stream messages in order with their headers",
            [m.body for m in got_s] == [m.body for m in first_s]
            and [m.headers.get("seq") for m in got_s] == list(range(count)),
        )
        async with ManagementClient(b.management_uri) as management:
            arguments = (await management.queue("/", QUEUE)).get("arguments")
        checks.check("queue restored with its type and arguments", arguments == QUEUE_ARGUMENTS, str(arguments))
    print(checks.summary())
    return checks


EXAMPLES = (
    "examples:\n"
    "  warren demo                                   # on a private broker it starts and stops itself\n"
    "  warren demo --broker amqp://guest:guest@localhost:5672/%2F"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--broker", metavar="URI", help="use this broker instead of starting a private node")
    parser.add_argument("--count", type=int, default=1000, help="sample messages per batch (default: 1000)")
    parser.add_argument("--archive", default="warren-archive", help="archive directory (default: ./warren-archive)")


def from_args(args: argparse.Namespace) -> int:
    checks = run(run_demo(args.broker, args.count, Path(args.archive)))
    return EXIT_OK if checks.failed == 0 else EXIT_CHECK_FAILED
