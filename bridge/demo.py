"""`warren demo`: the main job in miniature, on a private broker, printing what it verified.

For now (the foundation): publish a sample with every property and header type through our publisher
with confirms, consume it back through our consumer, and check that it came back complete, in order
and byte-identical. Later stages grow this into archive and replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import Message, connect

log = logging.getLogger("warren.demo")

DEMO_QUEUE = "warren.demo"


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


def sample_messages(count: int) -> list[Message]:
    """Messages that exercise every basic property, every header field type and multi-frame bodies."""
    messages = []
    for i in range(count):
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
        messages.append(Message.build(body, properties, routing_key=DEMO_QUEUE))
    return messages


@contextlib.asynccontextmanager
async def broker_for_demo(broker_uri: str | None) -> AsyncIterator[str]:
    """The broker to use: the given one, or a private node started here and removed afterwards."""
    if broker_uri:
        yield broker_uri
        return
    from bridge.localnode import LocalNode, require_rabbitmq

    require_rabbitmq()
    root = Path(tempfile.mkdtemp(prefix="warren-demo-"))
    node = LocalNode(root)
    print(f"starting a private RabbitMQ node in {root} ...", flush=True)
    await asyncio.to_thread(node.start)
    try:
        yield node.amqp_uri
    finally:
        await asyncio.to_thread(node.destroy)


async def round_trip(uri: str, count: int, checks: Checks) -> None:
    sent = sample_messages(count)
    conn = await connect(uri, name="warren-demo")
    try:
        ch = await conn.channel()
        await ch.queue_declare(DEMO_QUEUE, durable=True)
        await ch.queue_purge(DEMO_QUEUE)
        await ch.confirm_select(window=500)
        for message in sent:
            await ch.publish_message(message, mandatory=True)
        await ch.wait_for_confirms()
        checks.check(f"published {count} messages with publisher confirms, none nacked or returned", True)
        depth = (await ch.queue_declare(DEMO_QUEUE, passive=True)).message_count
        checks.check(f"queue holds {count} messages", depth == count, f"it holds {depth}")

        received: list[Message] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(message: Message) -> None:
            received.append(message)
            ch.ack(message.delivery_tag, multiple=True)
            if len(received) == count and not done.done():
                done.set_result(None)

        await ch.qos(200)
        tag = await ch.consume(DEMO_QUEUE, on_message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, 60)
        await ch.cancel(tag)
        checks.check(f"consumed all {count} messages back", len(received) == count, f"got {len(received)}")
        pairs = list(zip(sent, received, strict=False))
        checks.check("bodies byte-identical and in order", all(a.body == b.body for a, b in pairs))
        checks.check(
            "property sections byte-identical (all 14 properties, header table types kept)",
            all(a.raw_properties == b.raw_properties for a, b in pairs),
        )
        checks.check(
            "decoded properties equal what was published",
            all(a.properties == b.properties for a, b in pairs),
        )
        checks.check(
            "large bodies spanning several frames intact",
            all(a.body == b.body for a, b in pairs if len(a.body) > conn.frame_max),
        )
        depth = (await ch.queue_declare(DEMO_QUEUE, passive=True)).message_count
        checks.check("queue empty after acknowledging", depth == 0, f"{depth} left")
        await ch.queue_delete(DEMO_QUEUE)
    finally:
        await conn.close()


async def run_demo(broker_uri: str | None, count: int) -> Checks:
    checks = Checks()
    async with broker_for_demo(broker_uri) as uri:
        await round_trip(uri, count, checks)
    print(checks.summary())
    return checks
