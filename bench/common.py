"""What the AMQP benchmarks share: the timed span, the worker-process plumbing, queue housekeeping on
the broker under test, the baseline consumers (aio-pika, pika, bare), the bare confirmed publisher and
the private node.

The scripts import it as `from common import ...`: run as `python bench/<script>.py`, the bench directory
is first on sys.path. Importing it also puts the repository root on sys.path, so the scripts run from
anywhere, installed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACK_EVERY = 100
CONFIRM_WINDOW = 1000
SETTLE_SECONDS = 1.0  # after filling a queue, let the broker finish its own writes before a consumer starts


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def proc_status_kb(field_name: str) -> int:
    """A field of /proc/self/status in kB: VmRSS now, or VmHWM, this process's own RSS high-water mark
    (not getrusage's ru_maxrss: on Linux that carries the parent's RSS over fork and exec, so every
    worker would report at least the orchestrator's size)."""
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
        self.rss_before_kb = proc_status_kb("VmRSS")
        self._t0 = time.perf_counter() if t0 is None else t0
        self._c0 = time.process_time() if c0 is None else c0
        return self

    def stop(self, messages: int) -> Span:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        self.messages = messages
        return self


# ---- worker processes ---------------------------------------------------------------------------------


def report_worker(call: Callable[[], Span], cprofile: str | None) -> None:
    """Run one measurement in this worker process, under cProfile if asked, and hand its Span and this
    process's peak RSS to the orchestrator as the last line of stdout."""
    if cprofile:
        import cProfile

        prof = cProfile.Profile()
        result = prof.runcall(call)
        prof.dump_stats(cprofile)
    else:
        result = call()
    print(
        json.dumps(
            {
                "messages": result.messages,
                "seconds": result.seconds,
                "cpu": result.cpu,
                "rss_before_kb": result.rss_before_kb,
                "peak_rss_kb": proc_status_kb("VmHWM"),
                "extra": result.extra,
            }
        )
    )


def spawn_worker(script: str, argv: list[str], client: str, timeout: float) -> dict[str, Any]:
    """Run `script argv` in a fresh Python process and return what its report_worker printed."""
    out = subprocess.run([sys.executable, script, *argv], stdout=subprocess.PIPE, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"worker {client} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class Result:
    """One worker's run, as the orchestrator reads it back."""

    client: str
    prefetch: int | None  # or, for a publisher, the most unconfirmed messages
    messages: int
    seconds: float
    cpu: float
    rss_before_kb: int
    peak_rss_kb: int
    extra: dict[str, Any] = field(default_factory=dict)
    role: str = ""

    @classmethod
    def from_worker(cls, client: str, prefetch: int | None, r: dict[str, Any], role: str = "") -> Result:
        return cls(
            client,
            prefetch,
            r["messages"],
            r["seconds"],
            r["cpu"],
            r["rss_before_kb"],
            r["peak_rss_kb"],
            r.get("extra") or {},
            role,
        )

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.messages if self.messages else float("inf")


def rotate(items: list[Any], by: int) -> list[Any]:
    """Round-robin: each round starts one further on, so drift in the broker's state and the position in
    a round hit every client alike."""
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def fastest(results: list[Result], family: str) -> Result | None:
    """The fastest run of a client family: 'pika' covers pika (blocking) and pika-select."""
    runs = [r for r in results if r.client == family or r.client.startswith(family + "-")]
    return max(runs, key=lambda r: r.rate) if runs else None


USAGE_HEADER = f"{'client CPU':>10} {'CPU us/msg':>10} {'peak RSS':>9}"


def usage_columns(r: Result) -> str:
    """The table columns under USAGE_HEADER: CPU over wall time, CPU per message, the worker's VmHWM."""
    return f"{100 * r.cpu / r.seconds:>9.0f}% {r.cpu_us:>10.1f} {r.peak_rss_kb / 1024:>7.1f}MB"


def print_hotspots(path: str) -> None:
    import pstats

    stats = pstats.Stats(path, stream=sys.stdout)
    print("top 25 by own time:")
    stats.sort_stats("tottime").print_stats(25)
    print("warren's own functions, top 25 by cumulative time:")
    stats.sort_stats("cumulative").print_stats(r"/(bridge|protocol|sinks)/", 25)


def version_of(module: Any) -> str:
    try:
        from importlib.metadata import version

        return version(module.__name__)
    except Exception:
        return getattr(module, "__version__", "?")


def filesystem_of(path: str | Path) -> str:
    """The type of the filesystem holding `path`, as df -T names it."""
    return subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]


def stream_endpoint(stream_uri: str) -> dict[str, Any]:
    """rstream's Consumer and Producer keyword arguments for a rabbitmq-stream:// URI."""
    u = urlsplit(stream_uri)
    return {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 5552,
        "username": unquote(u.username or "guest"),
        "password": unquote(u.password or "guest"),
        "vhost": unquote(u.path[1:]) if len(u.path) > 1 else "/",
    }


@contextlib.contextmanager
def private_node(tmp: Path) -> Iterator[Any]:
    """A private RabbitMQ node in `tmp` on free loopback ports, destroyed at the end."""
    from bridge.harness.nodes import LocalNode

    log(f"starting a private RabbitMQ node in {tmp}")
    node = LocalNode(tmp / "node")
    try:
        node.start()
        yield node
    finally:
        node.destroy()


# ---- the broker under test ------------------------------------------------------------------------------


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


# ---- baseline consumers: drain a queue, ack with multiple=True every 100 and at the last, store nothing ----


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


# ---- the bare floor: handshake with pamqp, then only frame boundaries -----------------------------

_frame_head = struct.Struct(">BHI")
_ack_frame = struct.Struct(">BHIHHQBB")
_DELIVER = b"\x00\x3c\x00\x3c"


def opening_replies(method: Any, user: str, password: str, vhost: str) -> list[tuple[int, Any]]:
    """The bare clients' side of opening a connection and channel 1, with pamqp: what to send (channel
    number, method) in answer to `method`; nothing for the methods that come after channel.open-ok."""
    from pamqp import commands

    if isinstance(method, commands.Connection.Start):
        response = f"\0{user}\0{password}"
        start_ok = commands.Connection.StartOk(
            client_properties={"product": "bare"}, mechanism="PLAIN", response=response, locale="en_US"
        )
        return [(0, start_ok)]
    if isinstance(method, commands.Connection.Tune):
        return [
            (0, commands.Connection.TuneOk(method.channel_max, method.frame_max, 0)),
            (0, commands.Connection.Open(vhost)),
        ]
    if isinstance(method, commands.Connection.OpenOk):
        return [(1, commands.Channel.Open())]
    if isinstance(method, commands.Connection.Close | commands.Channel.Close):
        raise ConnectionError(f"broker closed: {method.reply_code} {method.reply_text}")
    return []


class _BarePeer(asyncio.Protocol):
    """What both bare peers share: the opening handshake with pamqp, a buffer of frames cut at a
    boundary, and an orderly close. A subclass answers the opening (`_opened`) and walks the frames
    once it streams (`_frames`, which returns where the last whole frame ends)."""

    def __init__(self, user: str, password: str, vhost: str) -> None:
        loop = asyncio.get_running_loop()
        self.user, self.password, self.vhost = user, password, vhost
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.streaming = False
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
        self._fail(f"lost the connection: {exc}")

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"{type(self).__name__}: {why}"))

    async def close(self) -> None:
        """connection.close, then wait for the broker to drop the socket: it has then settled our last
        frames (closing the socket at once can leave the last acks unprocessed, their messages requeued)."""
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
        pos = self._frames(buf)
        self.rest = buf[pos:] if pos < len(buf) else b""

    def _handshake(self, buf: bytes) -> bytes:
        from pamqp import exceptions, frame

        while buf and not self.streaming:
            try:
                consumed, _channel, method = frame.unmarshal(buf)
            except exceptions.UnmarshalingException:
                return buf
            buf = buf[consumed:]
            reply = opening_replies(method, self.user, self.password, self.vhost)
            self._opened(method, reply)
            for number, m in reply:
                self.transport.write(frame.marshal(m, number))  # type: ignore[union-attr]
        return buf

    def _opened(self, method: Any, reply: list[tuple[int, Any]]) -> None:
        """Add to `reply` what this peer sends after `method` of the opening; set `streaming` when done."""
        raise NotImplementedError

    def _frames(self, buf: bytes) -> int:
        raise NotImplementedError


def _peer_address(uri: str) -> tuple[str, str, str, str, int]:
    """(user, password, vhost, host, port) of an amqp:// URI."""
    u = urlsplit(uri)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    user, password = unquote(u.username or "guest"), unquote(u.password or "guest")
    return user, password, vhost, u.hostname or "127.0.0.1", u.port or 5672


class BareConsumer(_BarePeer):
    """The least a Python consumer can do: find frame boundaries, count basic.deliver, ack every 100.

    Delivery tags on a fresh channel with one consumer are 1, 2, 3..., so the count is the tag.
    """

    def __init__(self, user: str, password: str, vhost: str, queue: str, n: int, prefetch: int) -> None:
        super().__init__(user, password, vhost)
        self.queue, self.n, self.prefetch = queue, n, prefetch
        self.count = 0
        self.acked = 0

    def _opened(self, method: Any, reply: list[tuple[int, Any]]) -> None:
        from pamqp import commands

        if isinstance(method, commands.Channel.OpenOk):
            reply.append((1, commands.Basic.Qos(prefetch_count=self.prefetch)))
        elif isinstance(method, commands.Basic.QosOk):
            reply.append((1, commands.Basic.Consume(queue=self.queue, consumer_tag="bare")))
            self.span.start()
        elif isinstance(method, commands.Basic.ConsumeOk):
            self.streaming = True

    def _frames(self, buf: bytes) -> int:
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
        self.count = count
        if count - self.acked >= ACK_EVERY or (count >= self.n and self.acked < count):
            tag = count if count >= self.n else count - count % ACK_EVERY
            self.transport.write(_ack_frame.pack(1, 1, 13, 60, 80, tag, 1, 0xCE))  # type: ignore[union-attr]
            self.acked = tag
        if count >= self.n and not self.done.done():
            self.done.set_result(self.span.stop(count))
        return pos


async def consume_bare(uri: str, queue: str, n: int, prefetch: int) -> Span:
    user, password, vhost, host, port = _peer_address(uri)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: BareConsumer(user, password, vhost, queue, n, prefetch), host, port)
    span = await proto.done
    await proto.close()
    return span


# ---- the bare confirmed publisher: handshake with pamqp, then frames written and acks counted by hand ----

_ACK = b"\x00\x3c\x00\x50"  # basic.ack
_REFUSALS = {
    b"\x00\x3c\x00\x78": "basic.nack",
    b"\x00\x3c\x00\x32": "basic.return (unroutable)",
    b"\x00\x14\x00\x28": "channel.close",
    b"\x00\x0a\x00\x32": "connection.close",
}
_ack_args = struct.Struct(">QB")
_body_head = struct.Struct(">BHI")


class BarePublisher(_BarePeer):
    """The least a Python publisher with confirms can do: after the handshake (pamqp) and confirm.select,
    write each message as its three frames (basic.publish mandatory to the default exchange, a header
    with delivery-mode 2, the body), at most `window` unconfirmed, a window's worth per write, and count
    basic.ack frames (multiple or not) by walking frame boundaries. A nack, a return or a close fails it.

    Delivery tags after confirm.select are 1, 2, 3... in publishing order, so a multiple ack of tag T
    confirms everything through T.
    """

    def __init__(
        self, user: str, password: str, vhost: str, routing_key: str, bodies: list[bytes], window: int
    ) -> None:
        from pamqp import commands, frame

        super().__init__(user, password, vhost)
        self.bodies, self.n, self.window = bodies, len(bodies), window
        self.publish_frame = frame.marshal(
            commands.Basic.Publish(exchange="", routing_key=routing_key, mandatory=True), 1
        )
        self.header_frames: dict[int, bytes] = {}  # body size -> its header frame
        self.frame_max = 131072
        self.sent = 0
        self.confirmed = 0  # every tag through this one is acked
        self.acked_alone: set[int] = set()  # single acks above `confirmed` (out of order: rare)

    def _fail(self, why: str) -> None:
        super()._fail(f"{why} after {self.confirmed} confirms")

    def _opened(self, method: Any, reply: list[tuple[int, Any]]) -> None:
        from pamqp import commands

        if isinstance(method, commands.Connection.Tune) and method.frame_max:
            self.frame_max = method.frame_max
        elif isinstance(method, commands.Channel.OpenOk):
            reply.append((1, commands.Confirm.Select()))
        elif isinstance(method, commands.Confirm.SelectOk):
            self.streaming = True  # the first window goes out from _frames, with what follows select-ok
            self.span.start()

    def _frames(self, buf: bytes) -> int:
        pos = 0
        end = len(buf)
        confirmed = self.confirmed
        unpack = _frame_head.unpack_from
        while end - pos >= 7:
            ftype, _channel, size = unpack(buf, pos)
            frame_end = pos + 8 + size
            if frame_end > end:
                break
            if ftype == 1:
                head = buf[pos + 7 : pos + 11]
                if head == _ACK:
                    tag, bits = _ack_args.unpack_from(buf, pos + 11)
                    if bits & 1 or tag == confirmed + 1:
                        confirmed = max(confirmed, tag)
                    else:
                        self.acked_alone.add(tag)
                    if self.acked_alone:
                        confirmed = self._settle_alone(confirmed)
                elif head in _REFUSALS:
                    self.confirmed = confirmed
                    self._fail(f"the broker sent {_REFUSALS[head]}")
                    return end
            pos = frame_end
        self.confirmed = confirmed
        if confirmed >= self.n:
            if not self.done.done():
                self.done.set_result(self.span.stop(confirmed))
        else:
            self._publish()
        return pos

    def _settle_alone(self, confirmed: int) -> int:
        """Fold the single acks that now follow `confirmed` into it."""
        alone = {tag for tag in self.acked_alone if tag > confirmed}
        while confirmed + 1 in alone:
            confirmed += 1
            alone.discard(confirmed)
        self.acked_alone = alone
        return confirmed

    def _publish(self) -> None:
        """Write as many messages as the window has room for, in one write."""
        start = self.sent
        stop = min(self.n, self.confirmed + self.window)
        if stop <= start:
            return
        parts: list[bytes] = []
        append = parts.append
        publish, headers, pack = self.publish_frame, self.header_frames, _body_head.pack
        most = self.frame_max - 8
        for body in self.bodies[start:stop]:
            size = len(body)
            append(publish)
            append(headers.get(size) or self._header_frame(size))
            if 0 < size <= most:
                append(pack(3, 1, size))
                append(body)
                append(b"\xce")
            else:  # none for an empty body; several past the frame size
                for at in range(0, size, most):
                    chunk = body[at : at + most]
                    append(pack(3, 1, len(chunk)))
                    append(chunk)
                    append(b"\xce")
        self.sent = stop
        self.transport.write(b"".join(parts))  # type: ignore[union-attr]

    def _header_frame(self, size: int) -> bytes:
        from pamqp import commands, frame, header

        made = frame.marshal(header.ContentHeader(0, size, commands.Basic.Properties(delivery_mode=2)), 1)
        self.header_frames[size] = made
        return made


async def publish_bare(uri: str, routing_key: str, bodies: list[bytes], window: int) -> Span:
    """BarePublisher over one connection: the clock runs from confirm.select-ok to the last confirm."""
    user, password, vhost, host, port = _peer_address(uri)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: BarePublisher(user, password, vhost, routing_key, bodies, window), host, port
    )
    span = await proto.done
    await proto.close()
    return span
