"""Archiving throughput: warren draining a queue backlog into an archive, against clients that only consume.

    .venv/bin/python bench/archive_throughput.py [--messages N] [--prefetch 1000,10000] [--rss] [--profile]
    .venv/bin/python bench/archive_throughput.py --broker AMQP_URI --management-uri HTTP_URI [--stream-uri URI]

Without --broker a private RabbitMQ node is started in a temporary directory (free loopback ports) and
destroyed at the end; the system broker is never used unless you pass its URIs.

Queue backlog. Every run gets a fresh durable classic queue holding N persistent messages of --size
bytes, filled (outside the timing) with warren's own publisher (confirm window 1000), then drained by
the clients below. The bodies are random, taken in turn from a pool of 8192 distinct ones, so that the
archive compresses no better than real payloads would (one body repeated would make zstd's work and the
bytes written negligible).

- warren: `run_archiver` in-process on uvloop, move mode, ack-mode on-confirm, the given prefetch,
  segment-max-age 1, one local sink in a fresh temporary directory (fsync'd files, as in production).
  The clock starts when the source logs "archiving" (right after basic.consume-ok, as the consumers'
  clocks) and stops when the writer has committed record N (segment and checkpoint durable, the
  matching multiple-ack handed to the channel), polled every 2 ms; then `stopping` is set and the
  archiver shuts down in order. The archive's checkpoint and the queue's depth (0: nothing requeued)
  are checked afterwards.
- aio-pika (queue iterator, and callback), pika (BlockingConnection, and SelectConnection), and bare
  (handshake with pamqp, then only frame boundaries, count basic.deliver, multiple-ack every 100):
  consume and acknowledge (multiple-ack every 100), store nothing. The target is checked against the
  faster idiom of each client. These consumers are copied from bench/amqp_throughput.py.

Every consumer runs at every --prefetch, each in its own fresh worker process on uvloop (pika on its
own loops), so the comparison at one prefetch is like for like. Rounds (--repeat) go round-robin and
each (client, prefetch) keeps its best round, as the broker shares the host.

Stream. One stream of N messages (filled once, through AMQP with warren's publisher) is read from the
first offset by warren (`run_archiver` with a stream source, offset first, same archive settings: the
clock stops when record N is committed, so the segment-max-age roll of the last segment counts) and by
a bare rstream consumer that only counts (decoder=None, rstream's default credit).

--rss: peak RSS (the child's own VmHWM from /proc/<pid>/status, read by the child at its end; not
ru_maxrss, which on Linux inherits the parent's RSS across fork and exec) of a worker process running
warren's archiver over a backlog of --rss-messages (default 1,000,000) messages.

This prints figures; it asserts nothing about timing. --profile then runs warren's queue and stream
archiving once more under cProfile and prints the hotspots.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere, installed or not

ACK_EVERY = 100
CONFIRM_WINDOW = 1000
SEGMENT_MAX_AGE = 1.0
SETTLE_SECONDS = 1.0  # after filling, let the broker finish its own writes before a consumer starts
POLL_SECONDS = 0.002  # how often the warren worker looks at its writer's committed sequence
WORKER_TIMEOUT = 3600
DEFAULT_PREFETCHES = "1000,10000"

WARREN = "warren"
QUEUE_CLIENTS = (WARREN, "aio-pika", "aio-pika-callback", "pika", "pika-select", "bare")
STREAM_CLIENTS = ("warren-stream", "rstream")

TARGETS = (  # (family, factor, label): warren's msgs/s >= factor x the family's fastest idiom
    ("aio-pika", 2.5, ">= 2.5x {}"),
    ("pika", 1.0, "> {}"),
    ("bare", 0.8, ">= 80% of {}"),
)
STREAM_TARGET = 0.5
RSS_TARGET_MB = 150
BODY_POOL = 8192


def make_bodies(size: int, count: int = BODY_POOL) -> list[bytes]:
    """Distinct random bodies, used in turn: a 1 MiB zstd block holds no two alike, so the archive
    compresses what real (incompressible) payloads would, not one body repeated."""
    rng = random.Random(0)
    return [rng.randbytes(size) for _ in range(count)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _proc_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Span:
    """The timed section of one run: wall time and this process's CPU time, plus RSS when it began."""

    messages: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    rss_before_kb: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    _t0: float = 0.0
    _c0: float = 0.0

    def start(self, t0: float | None = None, c0: float | None = None) -> Span:
        self.rss_before_kb = _proc_status_kb("VmRSS")
        self._t0 = time.perf_counter() if t0 is None else t0
        self._c0 = time.process_time() if c0 is None else c0
        return self

    def stop(self, messages: int) -> Span:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        self.messages = messages
        return self


# ---- warren (worker side) --------------------------------------------------------------------------


async def archive_warren(args: argparse.Namespace) -> Span:
    """run_archiver over one queue or stream until record N is committed, then stop it in order."""
    import logging

    import bridge.archiver.service as service
    from bridge.archive.checkpoint import read_checkpoint
    from bridge.archive.record import Source, SourceKind
    from bridge.config import config_from_args, vhost_of
    from sinks import open_sink

    stream = args.worker == "warren-stream"
    n = args.messages
    sink_uri = Path(args.sink).as_uri()
    config = config_from_args(
        args.broker,
        [] if stream else [args.queue],
        [args.queue] if stream else [],
        [sink_uri],
        management_uri=args.management_uri,
        stream_uri=args.stream_uri,
        ack_mode="on-confirm",
        prefetch_count=args.prefetch,
        offset="first",
        segment_max_age=SEGMENT_MAX_AGE,
    )
    source = Source(vhost_of(args.broker), SourceKind.STREAM if stream else SourceKind.QUEUE, args.queue)

    marks: dict[str, tuple[float, float]] = {}

    class Marks(logging.Handler):
        """Notes when the source starts consuming; passes warnings and errors on to stderr."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "archiving" and "consuming" not in marks:
                marks["consuming"] = (time.perf_counter(), time.process_time())
            elif record.levelno >= logging.WARNING:
                log(f"  [worker] {record.levelname} {record.name}: {record.getMessage()}")

    warren_log = logging.getLogger("warren")
    warren_log.setLevel(logging.INFO)
    warren_log.addHandler(Marks())
    warren_log.propagate = False

    # Observation only: keep a reference to the writer run_archiver makes, to poll its committed
    # sequence in memory. If the private factory is ever renamed, fall back to reading the checkpoint.
    writers: list[Any] = []
    make_writer = getattr(service, "_writer", None)
    if callable(make_writer):

        def capture(*a: Any, **kw: Any) -> Any:
            w = make_writer(*a, **kw)
            writers.append(w)
            return w

        service._writer = capture  # type: ignore[attr-defined]

    poll_sink = open_sink(sink_uri)
    stopping = asyncio.Event()
    t_call, c_call = time.perf_counter(), time.process_time()
    rss_before = _proc_status_kb("VmRSS")
    task = asyncio.create_task(service.run_archiver(config, stopping=stopping))
    appended_at: float | None = None
    polls = 0
    try:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if task.done():
                task.result()
                raise RuntimeError("the archiver stopped before committing every message")
            if writers:
                w = writers[0]
                if appended_at is None and w.next_seq - 1 >= n:
                    appended_at = time.perf_counter()
                if w.committed_seq >= n:
                    break
            else:
                polls += 1
                if polls % 5 == 0:
                    checkpoint = await read_checkpoint(poll_sink, "", source)
                    if checkpoint is not None and checkpoint.last_seq >= n:
                        break
        t_end, c_end = time.perf_counter(), time.process_time()
    finally:
        stopping.set()
        t_stop = time.perf_counter()
        await task
    stopped_s = time.perf_counter() - t_stop
    t0, c0 = marks.get("consuming", (t_call, c_call))
    span = Span(messages=n, seconds=t_end - t0, cpu=c_end - c0, rss_before_kb=rss_before)
    checkpoint = await read_checkpoint(poll_sink, "", source)
    await poll_sink.close()
    files = [p for p in Path(args.sink).rglob("*.wseg")]
    span.extra = {
        "start_s": t0 - t_call,
        "appended_s": (appended_at - t0) if appended_at is not None else None,
        "stop_s": stopped_s,
        "checkpoint_seq": checkpoint.last_seq if checkpoint else 0,
        "segments": len(files),
        "archive_bytes": sum(p.stat().st_size for p in files),
    }
    return span


# ---- consumers that store nothing (copied from bench/amqp_throughput.py, prefetch as a parameter) -----


async def consume_aio_pika(uri: str, queue: str, n: int, prefetch: int) -> Span:
    """The queue iterator: measured faster than queue.consume(callback), which spawns a task per message."""
    import aio_pika

    conn = await aio_pika.connect(uri)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=prefetch)
    q = await ch.get_queue(queue, ensure=False)
    count = 0
    nbytes = 0
    span = Span().start()
    async with q.iterator() as it:
        async for message in it:
            count += 1
            nbytes += len(message.body)
            if count % ACK_EVERY == 0 or count == n:
                await message.ack(multiple=True)
                if count == n:
                    span.stop(count)
                    break
    await conn.close()
    return span


async def consume_aio_pika_callback(uri: str, queue: str, n: int, prefetch: int) -> Span:
    import aio_pika

    conn = await aio_pika.connect(uri)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=prefetch)
    q = await ch.get_queue(queue, ensure=False)
    done = asyncio.get_running_loop().create_future()
    count = 0
    nbytes = 0

    async def on_message(message: Any) -> None:
        nonlocal count, nbytes
        count += 1
        nbytes += len(message.body)
        if count % ACK_EVERY == 0 or count == n:
            await message.ack(multiple=True)
            if count == n and not done.done():
                done.set_result(None)

    span = Span().start()
    await q.consume(on_message)
    await done
    span.stop(count)
    await conn.close()
    return span


def consume_pika_blocking(uri: str, queue: str, n: int, prefetch: int) -> Span:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(uri))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    count = 0
    nbytes = 0

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        nonlocal count, nbytes
        count += 1
        nbytes += len(body)
        if count % ACK_EVERY == 0 or count == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
            if count == n:
                ch.stop_consuming()

    span = Span().start()
    ch.basic_consume(queue, on_message)
    ch.start_consuming()
    span.stop(count)
    conn.close()
    return span


def consume_pika_select(uri: str, queue: str, n: int, prefetch: int) -> Span:
    import pika

    st: dict[str, Any] = {"count": 0, "nbytes": 0}
    span = Span()

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        st["count"] += 1
        st["nbytes"] += len(body)
        count = st["count"]
        if count % ACK_EVERY == 0 or count == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
            if count == n:
                span.stop(count)
                conn.close()

    def on_qos(ch: Any) -> None:
        span.start()
        ch.basic_consume(queue, on_message)

    def on_channel(ch: Any) -> None:
        ch.basic_qos(prefetch_count=prefetch, callback=lambda _frame: on_qos(ch))

    def on_error(_conn: Any, err: Any) -> None:
        st["error"] = err
        conn.ioloop.stop()

    conn = pika.SelectConnection(
        pika.URLParameters(uri),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_open_error_callback=on_error,
        on_close_callback=lambda _c, _reason: conn.ioloop.stop(),
    )
    conn.ioloop.start()
    if "error" in st:
        raise RuntimeError(f"pika SelectConnection failed: {st['error']}")
    return span


_frame_head = struct.Struct(">BHI")
_ack_frame = struct.Struct(">BHIHHQBB")
_DELIVER = b"\x00\x3c\x00\x3c"


class BareConsumer(asyncio.Protocol):
    """The least a Python consumer can do: find frame boundaries, count basic.deliver, ack every 100.

    Delivery tags on a fresh channel with one consumer are 1, 2, 3..., so the count is the tag.
    """

    def __init__(self, user: str, password: str, vhost: str, queue: str, n: int, prefetch: int) -> None:
        loop = asyncio.get_running_loop()
        self.user, self.password, self.vhost, self.queue, self.n = user, password, vhost, queue, n
        self.prefetch = prefetch
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.streaming = False
        self.count = 0
        self.acked = 0
        self.span = Span()
        self.done = loop.create_future()
        self.lost = loop.create_future()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from pamqp.header import ProtocolHeader

        self.transport = transport  # type: ignore[assignment]
        transport.write(ProtocolHeader().marshal())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"bare consumer lost the connection: {exc}"))

    async def close(self) -> None:
        """connection.close, then wait for the broker to drop the socket: it has then settled our last ack
        (closing the socket at once can leave the last acks unprocessed and their messages requeued)."""
        from pamqp import commands, frame

        self.closing = True  # whatever comes now (close-ok) is dropped
        self.transport.write(frame.marshal(commands.Connection.Close(200, "bye", 0, 0), 0))  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), 5)
        except TimeoutError:
            self.transport.close()  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        buf = self.rest + data if self.rest else data
        if not self.streaming:
            buf = self._handshake(buf)
            if not self.streaming:
                self.rest = buf
                return
        pos = 0
        end = len(buf)
        count = self.count
        unpack = _frame_head.unpack_from
        startswith = buf.startswith
        while end - pos >= 7:
            ftype, _channel, size = unpack(buf, pos)
            frame_end = pos + 8 + size
            if frame_end > end:
                break
            if ftype == 1 and startswith(_DELIVER, pos + 7):
                count += 1
            pos = frame_end
        self.rest = buf[pos:] if pos < end else b""
        self.count = count
        if count - self.acked >= ACK_EVERY or (count >= self.n and self.acked < count):
            tag = count if count >= self.n else count - count % ACK_EVERY
            self.transport.write(_ack_frame.pack(1, 1, 13, 60, 80, tag, 1, 0xCE))  # type: ignore[union-attr]
            self.acked = tag
        if count >= self.n and not self.done.done():
            self.done.set_result(self.span.stop(count))

    def _handshake(self, buf: bytes) -> bytes:
        from pamqp import commands, exceptions, frame

        while buf and not self.streaming:
            try:
                consumed, _channel, method = frame.unmarshal(buf)
            except exceptions.UnmarshalingException:
                return buf
            buf = buf[consumed:]
            reply: list[tuple[int, Any]] = []
            if isinstance(method, commands.Connection.Start):
                reply.append(
                    (
                        0,
                        commands.Connection.StartOk(
                            client_properties={"product": "bare"},
                            mechanism="PLAIN",
                            response=f"\0{self.user}\0{self.password}",
                            locale="en_US",
                        ),
                    )
                )
            elif isinstance(method, commands.Connection.Tune):
                reply.append((0, commands.Connection.TuneOk(method.channel_max, method.frame_max, 0)))
                reply.append((0, commands.Connection.Open(self.vhost)))
            elif isinstance(method, commands.Connection.OpenOk):
                reply.append((1, commands.Channel.Open()))
            elif isinstance(method, commands.Channel.OpenOk):
                reply.append((1, commands.Basic.Qos(prefetch_count=self.prefetch)))
            elif isinstance(method, commands.Basic.QosOk):
                reply.append((1, commands.Basic.Consume(queue=self.queue, consumer_tag="bare")))
                self.span.start()
            elif isinstance(method, commands.Basic.ConsumeOk):
                self.streaming = True
            elif isinstance(method, commands.Connection.Close | commands.Channel.Close):
                raise ConnectionError(f"broker closed: {method.reply_code} {method.reply_text}")
            for number, m in reply:
                self.transport.write(frame.marshal(m, number))  # type: ignore[union-attr]
        return buf


async def consume_bare(uri: str, queue: str, n: int, prefetch: int) -> Span:
    u = urlsplit(uri)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    loop = asyncio.get_running_loop()
    user, password = unquote(u.username or "guest"), unquote(u.password or "guest")
    _, proto = await loop.create_connection(
        lambda: BareConsumer(user, password, vhost, queue, n, prefetch), u.hostname or "127.0.0.1", u.port or 5672
    )
    span = await proto.done
    await proto.close()
    return span


async def count_rstream(stream_uri: str, stream: str, n: int) -> Span:
    """A bare rstream consumer from the first offset that only counts: decoder=None, default credit."""
    from rstream import Consumer, ConsumerOffsetSpecification, OffsetType

    u = urlsplit(stream_uri)
    consumer = Consumer(
        u.hostname or "127.0.0.1",
        u.port or 5552,
        username=unquote(u.username or "guest"),
        password=unquote(u.password or "guest"),
        vhost=unquote(u.path[1:]) if len(u.path) > 1 else "/",
    )
    await consumer.start()
    done = asyncio.get_running_loop().create_future()
    count = 0

    def on_message(_message: Any, _context: Any) -> None:
        nonlocal count
        count += 1
        if count >= n and not done.done():
            done.set_result(None)

    span = Span().start()
    await consumer.subscribe(
        stream, on_message, decoder=None, offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None)
    )
    await done
    span.stop(count)
    await consumer.close()
    return span


# ---- worker process ---------------------------------------------------------------------------------

ASYNC_CONSUMERS = {
    "aio-pika": consume_aio_pika,
    "aio-pika-callback": consume_aio_pika_callback,
    "bare": consume_bare,
}
SYNC_CONSUMERS = {"pika": consume_pika_blocking, "pika-select": consume_pika_select}


def run_worker(args: argparse.Namespace) -> None:
    from protocol.loop import run  # uvloop, for warren and, for fairness, aio-pika, bare and rstream too

    def call() -> Span:
        client = args.worker
        if client in (WARREN, "warren-stream"):
            return run(archive_warren(args))
        if client == "rstream":
            return run(count_rstream(args.stream_uri, args.queue, args.messages))
        if client in SYNC_CONSUMERS:
            return SYNC_CONSUMERS[client](args.broker, args.queue, args.messages, args.prefetch)
        return run(ASYNC_CONSUMERS[client](args.broker, args.queue, args.messages, args.prefetch))

    if args.cprofile:
        import cProfile

        prof = cProfile.Profile()
        result = prof.runcall(call)
        prof.dump_stats(args.cprofile)
    else:
        result = call()
    print(
        json.dumps(
            {
                "messages": result.messages,
                "seconds": result.seconds,
                "cpu": result.cpu,
                "rss_before_kb": result.rss_before_kb,
                "peak_rss_kb": _proc_status_kb("VmHWM"),
                "extra": result.extra,
            }
        )
    )


# ---- orchestration ------------------------------------------------------------------------------------


@dataclass
class Result:
    client: str
    prefetch: int | None
    messages: int
    seconds: float
    cpu: float
    rss_before_kb: int
    peak_rss_kb: int
    extra: dict[str, Any]

    @classmethod
    def from_worker(cls, client: str, prefetch: int | None, r: dict[str, Any]) -> Result:
        return cls(
            client,
            prefetch,
            r["messages"],
            r["seconds"],
            r["cpu"],
            r["rss_before_kb"],
            r["peak_rss_kb"],
            r.get("extra") or {},
        )

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("inf")


class Broker:
    """Queue and stream housekeeping on the broker under test, with warren's client (outside every timing)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def _run(self, coro: Any) -> Any:
        from protocol.loop import run

        return run(coro)

    async def _with_channel(self, fn: Any) -> Any:
        from protocol import connect

        conn = await connect(self.uri)
        try:
            return await fn(conn, await conn.channel())
        finally:
            await conn.close()

    def version(self) -> str:
        async def go(conn: Any, _ch: Any) -> str:
            v = conn.server_properties.get("version", "?")
            return v.decode() if isinstance(v, bytes) else str(v)

        return self._run(self._with_channel(go))

    def fresh(self, tag: str, *, stream: bool = False) -> str:
        return self.declare(f"warren.bench.{tag}.{uuid.uuid4().hex[:8]}", stream=stream)

    def declare(self, name: str, *, stream: bool = False) -> str:
        """A durable classic queue, or a stream."""
        kind = "stream" if stream else "classic"

        async def go(_conn: Any, ch: Any) -> None:
            await ch.queue_declare(name, durable=True, arguments={"x-queue-type": kind})

        self._run(self._with_channel(go))
        return name

    def depth(self, name: str) -> int:
        async def go(_conn: Any, ch: Any) -> int:
            return (await ch.queue_declare(name, passive=True)).message_count

        return self._run(self._with_channel(go))

    def delete(self, name: str) -> None:
        async def go(_conn: Any, ch: Any) -> None:
            await ch.queue_delete(name)

        self._run(self._with_channel(go))

    def fill(self, name: str, n: int, bodies: list[bytes]) -> float:
        """N persistent messages with warren's publisher (confirms, 1000 in flight), the bodies in turn."""

        async def go(_conn: Any, ch: Any) -> None:
            from protocol import Properties

            await ch.confirm_select(window=CONFIRM_WINDOW)
            props = Properties(delivery_mode=2)
            pool = len(bodies)
            for i in range(n):
                await ch.publish("", name, bodies[i % pool], properties=props)
            await ch.wait_for_confirms()

        t0 = time.perf_counter()
        self._run(self._with_channel(go))
        return time.perf_counter() - t0


def spawn(
    args: argparse.Namespace,
    client: str,
    queue: str,
    n: int,
    prefetch: int | None,
    *,
    sink: str | None = None,
    cprofile: str | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        client,
        "--broker",
        args.broker,
        "--queue",
        queue,
        "--messages",
        str(n),
        "--size",
        str(args.size),
        "--prefetch",
        str(prefetch or 0),
    ]
    for flag, value in (
        ("--management-uri", args.management_uri),
        ("--stream-uri", args.stream_uri),
        ("--sink", sink),
        ("--cprofile", cprofile),
    ):
        if value:
            cmd += [flag, value]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=WORKER_TIMEOUT, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"worker {client} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_queue(
    args: argparse.Namespace, broker: Broker, client: str, prefetch: int, n: int, bodies: list[bytes]
) -> Result:
    queue = broker.fresh(f"archive.{client}")
    sink = tempfile.mkdtemp(prefix="warren-bench-archive-", dir=args.workdir) if client == WARREN else None
    try:
        fill_s = broker.fill(queue, n, bodies)
        time.sleep(SETTLE_SECONDS)
        log(f"  filled {queue} with {n} messages in {fill_s:.1f}s ({n / fill_s:.0f} msgs/s); {client} drains it")
        r = spawn(args, client, queue, n, prefetch, sink=sink)
        left = broker.depth(queue)
        if left:
            log(f"  WARNING: {left} messages left in {queue} after the {client} run")
        result = Result.from_worker(client, prefetch, r)
        result.extra["left"] = left
        if client == WARREN and result.extra.get("checkpoint_seq") != n:
            log(f"  WARNING: the archive's checkpoint says {result.extra.get('checkpoint_seq')}, expected {n}")
    finally:
        broker.delete(queue)
        if sink:
            shutil.rmtree(sink, ignore_errors=True)
    return result


def measure_stream(args: argparse.Namespace, client: str, stream: str, n: int) -> Result:
    sink = tempfile.mkdtemp(prefix="warren-bench-archive-", dir=args.workdir) if client != "rstream" else None
    try:
        r = spawn(args, client, stream, n, None, sink=sink)
    finally:
        if sink:
            shutil.rmtree(sink, ignore_errors=True)
    result = Result.from_worker(client, None, r)
    if client != "rstream" and result.extra.get("checkpoint_seq") != n:
        log(f"  WARNING: the archive's checkpoint says {result.extra.get('checkpoint_seq')}, expected {n}")
    return result


def rotate(items: list[Any], by: int) -> list[Any]:
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def fastest(results: list[Result], family: str) -> Result | None:
    """The fastest run of a client family: 'pika' covers pika (blocking) and pika-select."""
    runs = [r for r in results if r.client == family or r.client.startswith(family + "-")]
    return max(runs, key=lambda r: r.rate) if runs else None


def describe_warren(r: Result) -> str:
    e = r.extra
    appended = e.get("appended_s")
    return (
        f"{r.client} prefetch {r.prefetch}: consuming {e.get('start_s', 0):.2f}s after run_archiver was called; "
        + (f"all {r.messages} appended after {appended:.2f}s, " if appended is not None else "")
        + f"all committed after {r.seconds:.2f}s; orderly stop took {e.get('stop_s', 0):.2f}s; "
        f"{e.get('segments')} segments, {e.get('archive_bytes', 0) / 2**20:.1f} MiB"
        + (f"; {e['left']} messages left in the queue afterwards" if "left" in e else "")
    )


def print_table(title: str, results: list[Result]) -> None:
    header = (
        f"{'client':<18} {'prefetch':>8} {'messages':>9} {'seconds':>8} {'msgs/s':>9} "
        f"{'client CPU':>10} {'CPU us/msg':>10} {'peak RSS':>9}"
    )
    print(title)
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.client:<18} {r.prefetch or '-':>8} {r.messages:>9} {r.seconds:>8.2f} {r.rate:>9.0f} "
            f"{100 * r.cpu / r.seconds:>9.0f}% {1e6 * r.cpu / r.messages:>10.1f} {r.peak_rss_kb / 1024:>7.1f}MB"
        )


def check(ours: Result, them: Result | None, factor: float, label: str) -> str | None:
    if them is None:
        return None
    got = ours.rate / them.rate
    met = got > factor if label.startswith(">") and not label.startswith(">=") else got >= factor
    return (
        f"  warren (prefetch {ours.prefetch}) {label.format(f'{them.client} (prefetch {them.prefetch})')}: "
        f"{got:.2f}x ({ours.rate:.0f} vs {them.rate:.0f} msgs/s)  {'met' if met else 'MISSED'}"
    )


def print_queue_targets(results: list[Result], prefetches: list[int]) -> None:
    lines = []
    for prefetch in prefetches:
        at = [r for r in results if r.prefetch == prefetch]
        ours = next((r for r in at if r.client == WARREN), None)
        if ours is None:
            continue
        lines.append(f" at prefetch {prefetch} (every client at the same prefetch):")
        lines += [line for fam, f, lab in TARGETS if (line := check(ours, fastest(at, fam), f, lab))]
    warren_runs = [r for r in results if r.client == WARREN]
    if len(prefetches) > 1 and warren_runs:
        ours = max(warren_runs, key=lambda r: r.rate)
        lines.append(" warren's best prefetch against each client's best at any prefetch:")
        lines += [line for fam, f, lab in TARGETS if (line := check(ours, fastest(results, fam), f, lab))]
    if lines:
        print("\ntargets (against the faster idiom of each client):")
        print("\n".join(lines))


def run_all(args: argparse.Namespace) -> None:
    broker = Broker(args.broker)
    bodies = make_bodies(args.size)
    import aio_pika
    import pika
    import rstream
    import uvloop

    if args.stream_uri is None:
        from bridge.config import resolve_stream_uri
        from protocol.loop import run

        args.stream_uri = run(resolve_stream_uri(args.broker, args.management_uri))
    only = set(args.only.split(",")) if args.only else None

    def wanted(name: str, group: str) -> bool:
        return only is None or name in only or group in only

    prefetches = [int(p) for p in args.prefetch.split(",")]
    queue_clients = [c for c in QUEUE_CLIENTS if wanted(c, "queue")]
    stream_clients = [c for c in STREAM_CLIENTS if wanted(c, "stream")]
    rss = args.rss or (only is not None and "rss" in only)
    jobs = [(c, p) for p in prefetches for c in queue_clients]
    n = args.messages
    workdir = args.workdir or tempfile.gettempdir()
    fs = subprocess.run(["df", "-T", workdir], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    print(
        f"warren archive_throughput: {n} persistent messages of {args.size} bytes; queue runs: a fresh durable "
        f"classic queue each, prefetch {args.prefetch}, baselines multiple-ack every {ACK_EVERY}; warren: move, "
        f"ack-mode on-confirm, segment-max-age {SEGMENT_MAX_AGE:g}, local sink in {workdir} ({fs}); "
        f"best of {args.repeat}"
    )
    print(
        f"RabbitMQ {broker.version()}, Python {platform.python_version()}, uvloop {uvloop.__version__}, "
        f"aio-pika {aio_pika.__version__}, pika {pika.__version__}, rstream {_version(rstream)}, "
        f"{os.cpu_count()} CPUs (broker on the same host), load average {os.getloadavg()[0]:.2f} at start\n"
    )
    sys.stdout.flush()
    queue_runs: dict[tuple[str, int], list[Result]] = {}
    stream_runs: dict[str, list[Result]] = {}
    stream = None
    if stream_clients:
        stream = broker.fresh("stream", stream=True)
        fill_s = broker.fill(stream, n, bodies)
        time.sleep(SETTLE_SECONDS)
        log(f"filled stream {stream} with {n} messages in {fill_s:.1f}s")
    try:
        for i in range(args.repeat):
            log(f"round {i + 1} of {args.repeat}")
            for client, prefetch in rotate(jobs, i):
                r = measure_queue(args, broker, client, prefetch, n, bodies)
                log(f"  -> {client} prefetch {prefetch}: {r.rate:.0f} msgs/s, CPU {100 * r.cpu / r.seconds:.0f}%")
                if client == WARREN:
                    log("     " + describe_warren(r))
                queue_runs.setdefault((client, prefetch), []).append(r)
            for client in rotate(stream_clients, i):
                assert stream is not None
                r = measure_stream(args, client, stream, n)
                log(f"  -> {client}: {r.rate:.0f} msgs/s, CPU {100 * r.cpu / r.seconds:.0f}%")
                if client != "rstream":
                    log("     " + describe_warren(r))
                stream_runs.setdefault(client, []).append(r)
    finally:
        if stream is not None and not args.profile:
            broker.delete(stream)
    best_queue = [max(queue_runs[j], key=lambda r: r.rate) for j in jobs]
    best_stream = [max(stream_runs[c], key=lambda r: r.rate) for c in stream_clients]
    if best_queue:
        print_table(f"queue backlog of {n} messages, drained:", best_queue)
        print(
            "client CPU: the client process's CPU time over the run's wall time (the broker runs on the same host\n"
            "and takes most of the rest). CPU us/msg: the client's CPU per message. peak RSS: the worker's VmHWM."
        )
        for r in best_queue:
            if r.client == WARREN:
                print("  " + describe_warren(r))
        print_queue_targets(best_queue, prefetches)
    if best_stream:
        print()
        print_table(f"stream of {n} messages, read from the first offset:", best_stream)
        for r in best_stream:
            if r.client != "rstream":
                print("  " + describe_warren(r))
        ours = next((r for r in best_stream if r.client == "warren-stream"), None)
        bare = next((r for r in best_stream if r.client == "rstream"), None)
        if ours and bare:
            got = ours.rate / bare.rate
            print(
                f"\ntarget: warren stream archiving >= 50% of a bare rstream counter: {100 * got:.0f}% "
                f"({ours.rate:.0f} vs {bare.rate:.0f} msgs/s)  {'met' if got >= STREAM_TARGET else 'MISSED'}"
            )
    if rss:
        measure_rss(args, broker, bodies, prefetches)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if args.profile:
        profile_warren(args, broker, bodies, prefetches, stream)


def measure_rss(args: argparse.Namespace, broker: Broker, bodies: list[bytes], prefetches: list[int]) -> None:
    prefetch = args.rss_prefetch or max(prefetches)
    n = args.rss_messages
    log(f"RSS run: a backlog of {n} messages, warren at prefetch {prefetch}")
    r = measure_queue(args, broker, WARREN, prefetch, n, bodies)
    mb = r.peak_rss_kb / 1024
    print(
        f"\nwarren archiving a backlog of {n} messages ({n * args.size / 2**20:.0f} MiB of bodies), prefetch "
        f"{prefetch}: peak RSS {mb:.1f} MB (VmHWM of the worker process; {r.rss_before_kb / 1024:.1f} MB before "
        f"run_archiver), {r.rate:.0f} msgs/s"
    )
    print(f"target: peak RSS < {RSS_TARGET_MB} MB: {'met' if mb < RSS_TARGET_MB else 'MISSED'}")
    print("  " + describe_warren(r))


def profile_warren(
    args: argparse.Namespace, broker: Broker, bodies: list[bytes], prefetches: list[int], stream: str | None
) -> None:
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, str, int | None]] = [(WARREN, "queue", p) for p in prefetches]
        if stream is not None:
            runs.append(("warren-stream", stream, None))
        for client, target, prefetch in runs:
            path = os.path.join(tmp, f"{client}-{prefetch}.prof")
            sink = tempfile.mkdtemp(prefix="warren-bench-archive-", dir=args.workdir)
            queue = target
            try:
                if client == WARREN:
                    queue = broker.fresh("profile")
                    broker.fill(queue, args.messages, bodies)
                    time.sleep(SETTLE_SECONDS)
                out = spawn(args, client, queue, args.messages, prefetch, sink=sink, cprofile=path)
                r = Result.from_worker(client, prefetch, out)
            finally:
                if client == WARREN:
                    broker.delete(queue)
                shutil.rmtree(sink, ignore_errors=True)
            what = f"{client} prefetch {prefetch}" if prefetch else client
            print(f"\ncProfile of {what} ({args.messages} messages, {r.rate:.0f} msgs/s under the profiler):")
            stats = pstats.Stats(path, stream=sys.stdout)
            print("top 25 by own time:")
            stats.sort_stats("tottime").print_stats(25)
            print("warren's own functions, top 25 by cumulative time:")
            stats.sort_stats("cumulative").print_stats(r"/(bridge|protocol|sinks)/", 25)
        if stream is not None:
            broker.delete(stream)


def _version(module: Any) -> str:
    try:
        from importlib.metadata import version

        return version(module.__name__)
    except Exception:
        return getattr(module, "__version__", "?")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--broker", help="AMQP URI of the broker to use (default: start a private node)")
    p.add_argument("--management-uri", help="its management API (default: derived from --broker, port 15672)")
    p.add_argument("--stream-uri", help="its stream endpoint (default: asked of the management API)")
    p.add_argument("--messages", type=int, default=200_000, help="messages per run (default 200000)")
    p.add_argument("--size", type=int, default=256, help="body size in bytes (default 256)")
    p.add_argument("--prefetch", default=DEFAULT_PREFETCHES, help=f"comma-separated (default {DEFAULT_PREFETCHES})")
    p.add_argument("--repeat", type=int, default=2, help="rounds over every client; each keeps its best (default 2)")
    p.add_argument(
        "--only", help="comma-separated subset: client names (warren, aio-pika, ..., rstream), queue, stream, rss"
    )
    p.add_argument("--rss", action="store_true", help="also the peak RSS of warren archiving --rss-messages")
    p.add_argument("--rss-messages", type=int, default=1_000_000, help="backlog for --rss (default 1000000)")
    p.add_argument("--rss-prefetch", type=int, help="prefetch for --rss (default: the largest --prefetch)")
    p.add_argument("--workdir", help="where the archives go (default: the system's temporary directory)")
    p.add_argument("--profile", action="store_true", help="then cProfile warren's queue and stream archiving")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--queue", help=argparse.SUPPRESS)
    p.add_argument("--sink", help=argparse.SUPPRESS)
    p.add_argument("--cprofile", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        args.prefetch = int(args.prefetch)
        run_worker(args)
        return
    if args.broker:
        if args.management_uri is None:
            from bridge.config import derived_uri

            args.management_uri = derived_uri(args.broker, "http", 15672, keep_vhost=False)
        run_all(args)
        return

    from bridge.localnode import LocalNode

    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        log(f"starting a private RabbitMQ node in {tmp}")
        node = LocalNode(Path(tmp) / "node")
        try:
            node.start()
            args.broker = node.amqp_uri
            args.management_uri = node.management_uri
            args.stream_uri = args.stream_uri or node.stream_uri
            run_all(args)
        finally:
            node.destroy()


if __name__ == "__main__":
    main()
