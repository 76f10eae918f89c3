"""Driving `warren archive` as an operator would, for the archiver's integration and fault tests.

The archiver runs as a subprocess of the CLI; the witness publishes with pika (publisher confirms) and
the archive is read back with warren's own reader. Nothing here waits by sleeping: every wait polls
with a deadline and says what it waited for when the deadline passes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pika
import pika.exceptions
import pika.spec
from prometheus_client.parser import text_string_to_metric_families

from bridge.archive.checkpoint import read_checkpoint
from bridge.archive.reader import list_segments, read_index, read_records
from bridge.archive.record import Record, Source, SourceKind
from bridge.harness.nodes import LocalNode
from protocol.loop import run
from sinks import open_sink
from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# ---- waiting -----------------------------------------------------------------------------------


# ---- the witness: pika, with publisher confirms -----------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One message as the witness publishes it; `raw_properties` is the property section pika sends."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.spec.BasicProperties

    @property
    def raw_properties(self) -> bytes:
        # pika's content header frame is class id, weight, body size, then exactly these bytes.
        return b"".join(self.properties.encode())

    @property
    def message_id(self) -> str:
        return self.properties.message_id

    def raw_as_delivered_by(self, version: str) -> bytes:
        """The property section a broker of `version` delivers for this message (see `as_delivered`)."""
        return as_delivered(self.raw_properties, version)


# Bytes after the type tag of each fixed-size field value in a RabbitMQ header table.
# Any other type (S, A, F, x) is a u32 length and that many bytes.
_FIXED = {
    b"t": 1,
    b"b": 1,
    b"B": 1,
    b"s": 2,
    b"u": 2,
    b"I": 4,
    b"i": 4,
    b"l": 8,
    b"f": 4,
    b"d": 8,
    b"D": 5,
    b"T": 8,
    b"V": 0,
}


def as_delivered(raw: bytes, version: str) -> bytes:
    """What a consumer receives for a property section published as `raw`. RabbitMQ 3.10 passes the
    bytes through; RabbitMQ 4 delivers the header table's entries sorted by name (each entry's bytes,
    its type included, unchanged), so that is what an archive of a 4.0 broker holds."""
    flags = int.from_bytes(raw[:2], "big")
    if int(version.split(".")[0]) < 4 or not flags & (1 << 13):
        return raw
    pos = 2
    for bit in (15, 14):  # content-type, content-encoding come before the table
        if flags & (1 << bit):
            pos += 1 + raw[pos]
    end = pos + 4 + int.from_bytes(raw[pos : pos + 4], "big")
    entries, at = [], pos + 4
    while at < end:
        name_end = at + 1 + raw[at]
        kind = raw[name_end : name_end + 1]
        size = _FIXED[kind] if kind in _FIXED else 4 + int.from_bytes(raw[name_end + 1 : name_end + 5], "big")
        value_end = name_end + 1 + size
        entries.append((raw[at + 1 : name_end], raw[at:value_end]))
        at = value_end
    return raw[: pos + 4] + b"".join(entry for _, entry in sorted(entries)) + raw[end:]


def rich_properties(i: int, *, persistent: bool = True) -> pika.spec.BasicProperties:
    """All 14 basic properties, with a header table of every type pika encodes, varied by `i`."""
    when = dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=dt.UTC) + dt.timedelta(seconds=i)
    headers: dict[str, Any] = {
        "i": i,
        "long": 2**40 + i,
        "negative": -i - 1,
        "text": f"héllo ✓ {i}",
        "bytes": bytes(range(i % 7, i % 7 + 9)) + b"\x00\xff",
        "flag": i % 2 == 0,
        "void": None,
        "decimal": decimal.Decimal(i).scaleb(-3) + decimal.Decimal("0.001"),
        "when": when,
        "array": [i, "two", b"\x03", [4, {"five": 5}], None, True, decimal.Decimal("6.5"), when],
        "nested": {"level": 1, "deeper": {"level": 2, "list": [{"k": f"v{i}"}], "empty": {}}, "empty_list": []},
        "x-death-like": [{"count": i % 3 + 1, "reason": "rejected", "queue": "elsewhere", "time": when}],
    }
    if i % 5 == 0:
        headers["only-some"] = "sometimes present"
    return pika.BasicProperties(
        content_type="application/octet-stream" if i % 3 else "text/plain; charset=utf-8",
        content_encoding="identity" if i % 2 else "gzip",
        headers=headers,
        delivery_mode=2 if persistent else 1,
        priority=i % 10,
        correlation_id=f"corr-{i // 10}",
        reply_to=f"amq.rabbitmq.reply-to.{i % 4}",
        expiration="86400000",  # a day: nothing expires during a test, and the property travels
        message_id=f"msg-{i:07d}",
        timestamp=1_700_000_000 + i,
        type=f"type.{i % 6}",
        user_id="guest",  # the broker checks user_id against the login
        app_id="warren-tests",
        cluster_id=f"cluster-{i % 2}",
    )


def rich_messages(count: int, routing_key: str, *, exchange: str = "", persistent: bool = True) -> list[Outgoing]:
    """`count` messages with every property set and bodies of varied length and content (empty included)."""
    return [Outgoing(exchange, routing_key, _body(i), rich_properties(i, persistent=persistent)) for i in range(count)]


def simple_messages(
    count: int, routing_key: str, *, exchange: str = "", start: int = 0, persistent: bool = True
) -> list[Outgoing]:
    """Small messages identified by message_id, for volume."""
    return [
        Outgoing(
            exchange,
            routing_key,
            b"body-%07d" % i,
            pika.BasicProperties(message_id=f"msg-{i:07d}", delivery_mode=2 if persistent else 1),
        )
        for i in range(start, start + count)
    ]


def _body(i: int) -> bytes:
    if i % 97 == 0:
        return b""
    return (f"message {i} ".encode() + bytes((i * 31 + k) % 256 for k in range(i % 50))) * (1 + i % 4)


class _ConfirmingPublisher:
    """Publishes over pika's SelectConnection with a window of unconfirmed messages (confirms pipelined)."""

    def __init__(self, uri: str, messages: Sequence[Outgoing], window: int) -> None:
        self.messages = messages
        self.window = window
        self.next = 0  # index of the next message to publish; its delivery tag is next + 1
        self.outstanding: set[int] = set()
        self.low = 1  # every tag below this is confirmed
        self.confirmed = 0
        self.error: str | None = None
        self.channel: Any = None
        self.connection = pika.SelectConnection(
            pika.URLParameters(uri),
            on_open_callback=lambda conn: conn.channel(on_open_callback=self._on_channel),
            on_open_error_callback=lambda _conn, err: self._fail(f"cannot connect: {err!r}"),
            on_close_callback=self._on_closed,
        )

    def run(self, timeout: float) -> None:
        self.connection.ioloop.call_later(timeout, lambda: self._fail(f"not all confirmed within {timeout}s"))
        self.connection.ioloop.start()
        if self.error is not None:
            raise AssertionError(f"publishing failed after {self.confirmed} confirms: {self.error}")

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_close_callback(lambda _ch, reason: self._fail(f"channel closed: {reason!r}"))
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._pump())

    def _pump(self) -> None:
        while self.next < len(self.messages) and len(self.outstanding) < self.window:
            m = self.messages[self.next]
            self.channel.basic_publish(m.exchange, m.routing_key, m.body, m.properties)
            self.next += 1
            self.outstanding.add(self.next)
        if self.confirmed == len(self.messages) and self.connection.is_open:
            self.connection.close()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self._fail(f"the broker nacked delivery tag {method.delivery_tag}")
            return
        tags = range(self.low, method.delivery_tag + 1) if method.multiple else (method.delivery_tag,)
        for tag in tags:
            if tag in self.outstanding:
                self.outstanding.remove(tag)
                self.confirmed += 1
        while self.low not in self.outstanding and self.low <= self.next:
            self.low += 1
        self._pump()

    def _fail(self, error: str) -> None:
        if self.error is None and self.confirmed < len(self.messages):
            self.error = error
        if self.connection.is_open:
            self.connection.close()
        elif self.connection.is_closed:
            self.connection.ioloop.stop()

    def _on_closed(self, _conn: Any, reason: Exception) -> None:
        if self.confirmed < len(self.messages) and self.error is None:
            self.error = f"connection closed: {reason!r}"
        self.connection.ioloop.stop()


def publish(uri: str, messages: Sequence[Outgoing], *, window: int = 2000, timeout: float = 120) -> float:
    """Publish `messages` in order with publisher confirms; returns when every one is confirmed (the rate)."""
    if not messages:
        return 0.0
    started = time.monotonic()
    _ConfirmingPublisher(uri, messages, window).run(timeout)
    return len(messages) / (time.monotonic() - started)


class Witness:
    """A blocking pika connection for declaring, inspecting and fetching; closed by `close()` or `with`."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.connection = pika.BlockingConnection(pika.URLParameters(uri))
        self.channel = self.connection.channel()

    def __enter__(self) -> Witness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def _fresh_channel(self) -> Any:
        if not self.channel.is_open:
            self.channel = self.connection.channel()
        return self.channel

    def declare_queue(self, queue: str, *, arguments: dict[str, Any] | None = None) -> None:
        self._fresh_channel().queue_declare(queue, durable=True, arguments=arguments)
        self.channel.queue_purge(queue)

    def declare_stream(self, stream: str) -> None:
        self._fresh_channel().queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})

    def depth(self, queue: str) -> int:
        """Messages ready in the queue (not those delivered and unacknowledged)."""
        return self._fresh_channel().queue_declare(queue, passive=True).method.message_count

    def exists(self, queue: str) -> bool:
        try:
            self._fresh_channel().queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        return True

    def delete(self, *queues: str) -> None:
        for queue in queues:
            self._fresh_channel().queue_delete(queue)

    def read_stream(self, stream: str, count: int) -> list[tuple[int, bytes]]:
        """The first `count` messages of a stream as (offset, body), read through AMQP 0-9-1 from the start."""
        channel = self._fresh_channel()
        channel.basic_qos(prefetch_count=500)  # a stream consumer needs a prefetch
        got: list[tuple[int, bytes]] = []
        for method, properties, body in channel.consume(
            stream, arguments={"x-stream-offset": "first"}, inactivity_timeout=10
        ):
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            got.append((int(properties.headers["x-stream-offset"]), body))
            if len(got) == count:
                break
        channel.cancel()
        return got

    def fetch_all(self, queue: str, *, ack: bool = True) -> list[tuple[pika.spec.BasicProperties, bytes]]:
        """Every ready message of `queue`, in order, with basic.get (acknowledged unless `ack` is False)."""
        channel = self._fresh_channel()
        got = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            got.append((properties, body))
        if got and ack:
            channel.basic_ack(0, multiple=True)
        elif got:
            channel.basic_nack(0, multiple=True, requeue=True)
        return got


# ---- the archiver, as a subprocess of the CLI ------------------------------------------------------


def queue_counts(node: LocalNode, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) as the queue itself reports them, through rabbitmqctl: exact, not sampled."""
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        name, ready, unacked = line.rsplit("\t", 2)
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError(f"rabbitmqctl list_queues does not list {queue!r}:\n{out}")


def source_args(node: LocalNode) -> list[str]:
    return ["--broker", node.amqp_uri, "--management-uri", node.management_uri, "--stream-uri", node.stream_uri]


def write_config(path: Path, node: LocalNode, sink: Path, sources: Iterable[dict[str, Any]], **archive: Any) -> Path:
    """A TOML configuration for `warren archive --config`, in the Shovel's vocabulary."""
    lines = [
        "[broker]",
        f"uri = {_toml(node.amqp_uri)}",
        f"management-uri = {_toml(node.management_uri)}",
        f"stream-uri = {_toml(node.stream_uri)}",
        "",
        "[archive]",
        f"sinks = [{_toml(str(sink))}]",
        *(f"{key.replace('_', '-')} = {_toml(value)}" for key, value in archive.items()),
    ]
    for source in sources:
        lines += ["", "[[source]]", *(f"{key} = {_toml(value)}" for key, value in source.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class ArchiverProcess:
    """One `warren archive` subprocess; its stderr (the logs) goes to a file so it never blocks."""

    proc: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"warren archive did not exit within {timeout}s; its log:\n{self.stderr()}") from None

    def terminate(self, timeout: float = 60) -> str:
        """SIGTERM: the archiver commits, acknowledges and exits 0; returns its log."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        assert code == 0, f"warren archive exited {code} after SIGTERM; its log:\n{self.stderr()}"
        return self.stderr()

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.proc.kill()  # Popen's own: never signals a reaped, possibly reused pid
        self.proc.wait(30)

    def wait_for_log(self, text: str, *, timeout: float = 30, count: int = 1, every: float = 0.05) -> None:
        wait_until(
            lambda: self.stderr().count(text) >= count or not self.running(),
            timeout=timeout,
            what=f"{text!r} in the archiver's log",
            every=every,
        )
        assert self.stderr().count(text) >= count, f"the archiver exited early; its log:\n{self.stderr()}"


@dataclass
class Archivers:
    """Starts `warren archive` processes and makes sure none outlives the test."""

    workdir: Path
    started: list[ArchiverProcess] = field(default_factory=list)

    def __enter__(self) -> Archivers:
        return self

    def __exit__(self, *exc: object) -> None:
        for archiver in self.started:
            if archiver.running():
                archiver.kill()

    def start(self, *args: str) -> ArchiverProcess:
        log = self.workdir / f"archiver-{len(self.started)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "archive", *args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        archiver = ArchiverProcess(proc, log)
        self.started.append(archiver)
        return archiver

    def run(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (snapshots, bad input): exit code, stdout and stderr; `env` adds variables."""
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", "archive", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def warren(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Any other warren command (ls, verify), to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_verifies(sink: Path) -> None:
    result = warren("verify", str(sink))
    assert result.returncode == 0, f"warren verify exited {result.returncode}:\n{result.stdout}{result.stderr}"


# ---- reading the archive back with warren's reader ---------------------------------------------


def queue_source(name: str, vhost: str = "/") -> Source:
    return Source(vhost, SourceKind.QUEUE, name)


def stream_source(name: str, vhost: str = "/") -> Source:
    return Source(vhost, SourceKind.STREAM, name)


def read_archive(sink: Path, source: Source) -> list[Record]:
    """Every record of `source`, in sequence order."""

    async def main() -> list[Record]:
        async with open_sink(str(sink)) as s:
            return [r for seg in await list_segments(s, source=source) async for r in read_records(s, seg)]

    return run(main())


def archived_count(sink: Path, source: Source) -> int:
    """Records of `source` in the archive, from the segments' footers (cheap enough to poll)."""
    if not sink.exists():
        return 0

    async def main() -> int:
        async with open_sink(str(sink)) as s:
            return sum([(await read_index(s, seg)).records for seg in await list_segments(s, source=source)])

    return run(main())


def segment_sizes(sink: Path, source: Source) -> list[int]:
    async def main() -> list[int]:
        async with open_sink(str(sink)) as s:
            return [(await read_index(s, seg)).records for seg in await list_segments(s, source=source)]

    return run(main())


def committed_seq(sink: Path, source: Source) -> int:
    """The last sequence durable in the archive (0 before the first commit), as recovery finds it: the
    checkpoint, then the segments after it up to the first gap. The checkpoint alone lags the segments
    by up to a second, and a fast archiver commits thousands of records in that time."""

    async def main() -> int:
        async with open_sink(str(sink)) as s:
            checkpoint = await read_checkpoint(s, "", source)
            last = checkpoint.last_seq if checkpoint else 0
            for seg in await list_segments(s, source=source):
                if seg.first_seq <= last:
                    continue
                if seg.first_seq > last + 1:
                    break
                last = (await read_index(s, seg)).last_seq
        return last

    return run(main()) if sink.exists() else 0


def definitions_objects(sink: Path) -> list[Path]:
    return sorted(sink.glob("_definitions/**/*.json.zst"))


def message_ids(records: Iterable[Record]) -> list[str | None]:
    return [r.properties.message_id for r in records]


def pika_properties(raw: bytes) -> pika.spec.BasicProperties:
    """Decode a property section with pika's own decoder (flag words, then values)."""
    properties = pika.spec.BasicProperties()
    properties.decode(raw)
    return properties


def health(port: int, path: str) -> tuple[int, str]:
    """An HTTP GET of the archiver's health endpoint: status and body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:  # not listening yet
        return 0, str(err)


def scrape(port: int) -> dict[tuple[str, str], float]:
    """The scrape's samples by name and source (the source label, or "" for none)."""
    status, text = health(port, "/metrics")
    assert status == 200, (status, text)
    return {
        (s.name, s.labels.get("source", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def kill_after(
    archiver: ArchiverProcess, sink: Path, source: Source, rng: random.Random, most: int, note: str, total: int
) -> int:
    """kill -9 once between 1000 and `most` more records are committed (never past `total`, all there
    is), at a random instant; the sequence then."""
    kill_at = min(committed_seq(sink, source) + rng.randrange(1000, most), total)
    wait_until(
        lambda: committed_seq(sink, source) >= kill_at or not archiver.running(),
        timeout=60,
        what=f"sequence {kill_at} committed ({note})",
    )
    time.sleep(rng.uniform(0, 0.03))  # not a wait: lands the kill anywhere in a segment's life
    assert archiver.running(), f"the archiver exited by itself ({note}); its log:\n{archiver.stderr()}"
    archiver.kill()
    return committed_seq(sink, source)
