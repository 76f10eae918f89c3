"""AMQP throughput: warren's client against aio-pika, pika and a bare asyncio floor.

    .venv/bin/python bench/amqp_throughput.py [--broker AMQP_URI] [--messages N] [--size BYTES]

Without --broker a private RabbitMQ node is started in a temporary directory (free loopback ports)
and removed at the end; the system broker is never used unless you pass its URI.

Every measurement gets a fresh durable classic queue. Consumer runs find it already filled (by our
publisher with confirms, outside the timing) and drain it with prefetch 1000, acking with
multiple=True every 100 messages and at the last one. Publisher runs publish persistent messages with
confirms, at most 1000 unconfirmed (pika's BlockingConnection confirms one message at a time, so it
gets fewer messages). Each client runs in its own fresh process, so its peak RSS is its own and no run
inherits another's heap. Our client, aio-pika and the bare floor run on uvloop.

aio-pika and pika consume both ways each is idiomatically used (aio-pika: queue iterator and callback;
pika: BlockingConnection and SelectConnection); the targets are checked against the faster of each.
The bare floor does the handshake with pamqp, then only walks frame boundaries, counts basic.deliver
frames and sends a multiple-ack every 100: no message objects, the ceiling for a Python consumer.

Rounds (--repeat, default 3) go round-robin over every client and each client's best round counts, as
the broker shares the host. This prints figures; it asserts nothing about timing. --profile then runs
our consumer and publisher once more under cProfile and prints their hotspots.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere, installed or not

PREFETCH = 1000
ACK_EVERY = 100
CONFIRM_WINDOW = 1000
PIKA_PUBLISH_MESSAGES = 20000
WORKER_TIMEOUT = 1800
SETTLE_SECONDS = 1.0  # after filling a queue, let the broker finish its own writes before a consumer starts

# aio-pika and pika each run both ways they are idiomatically used; the faster one sets the target
CONSUMERS = ("ours", "aio-pika", "aio-pika-callback", "pika", "pika-select", "bare")
PUBLISHERS = ("ours", "aio-pika", "pika")


def make_body(size: int) -> bytes:
    return random.Random(0).randbytes(size)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss_kb() -> int:
    """This process's RSS high-water mark. Not getrusage's ru_maxrss: on Linux that carries the parent's
    RSS over fork and exec, so every worker would report at least the orchestrator's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@dataclass
class Span:
    """The timed section of one run: wall time and this process's CPU time, plus RSS when it began."""

    messages: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    rss_before_kb: int = 0
    _t0: float = 0.0
    _c0: float = 0.0

    def start(self) -> Span:
        self.rss_before_kb = rss_kb()
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        return self

    def stop(self, messages: int) -> Span:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0
        self.messages = messages
        return self


# ---- consumers (each runs in a worker process and returns its Span) --------------------------------


async def consume_ours(uri: str, queue: str, n: int) -> Span:
    from protocol import connect

    conn = await connect(uri)
    ch = await conn.channel()
    await ch.qos(PREFETCH)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0
    nbytes = 0

    def on_message(message: Any) -> None:
        nonlocal count, nbytes
        count += 1
        nbytes += len(message.body)
        if count % ACK_EVERY == 0 or count == n:
            ch.ack(message.delivery_tag, multiple=True)
            if count == n:
                done.set_result(None)

    span = Span().start()
    await ch.consume(queue, on_message)
    await done
    span.stop(count)
    await conn.close()
    return span


async def consume_aio_pika(uri: str, queue: str, n: int) -> Span:
    """The queue iterator: measured faster than queue.consume(callback), which spawns a task per message."""
    import aio_pika

    conn = await aio_pika.connect(uri)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=PREFETCH)
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


async def consume_aio_pika_callback(uri: str, queue: str, n: int) -> Span:
    import aio_pika

    conn = await aio_pika.connect(uri)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=PREFETCH)
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


def consume_pika_blocking(uri: str, queue: str, n: int) -> Span:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(uri))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
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


def consume_pika_select(uri: str, queue: str, n: int) -> Span:
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
        ch.basic_qos(prefetch_count=PREFETCH, callback=lambda _frame: on_qos(ch))

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


class BareConsumer(asyncio.Protocol):
    """The least a Python consumer can do: find frame boundaries, count basic.deliver, ack every 100.

    Delivery tags on a fresh channel with one consumer are 1, 2, 3..., so the count is the tag.
    """

    def __init__(self, user: str, password: str, vhost: str, queue: str, n: int) -> None:
        loop = asyncio.get_running_loop()
        self.user, self.password, self.vhost, self.queue, self.n = user, password, vhost, queue, n
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        self.streaming = False
        self.count = 0
        self.acked = 0
        self.span = Span()
        self.done = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from pamqp.header import ProtocolHeader

        self.transport = transport  # type: ignore[assignment]
        transport.write(ProtocolHeader().marshal())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"bare consumer lost the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
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
                reply.append((1, commands.Basic.Qos(prefetch_count=PREFETCH)))
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


async def consume_bare(uri: str, queue: str, n: int) -> Span:
    u = urlsplit(uri)
    vhost = unquote(u.path[1:]) if len(u.path) > 1 else "/"
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: BareConsumer(unquote(u.username or "guest"), unquote(u.password or "guest"), vhost, queue, n),
        u.hostname or "127.0.0.1",
        u.port or 5672,
    )
    span = await proto.done
    proto.transport.close()
    return span


# ---- publishers ------------------------------------------------------------------------------------


async def publish_ours(uri: str, queue: str, n: int, body: bytes) -> Span:
    from protocol import Properties, connect

    conn = await connect(uri)
    ch = await conn.channel()
    await ch.confirm_select(window=CONFIRM_WINDOW)
    props = Properties(delivery_mode=2)
    span = Span().start()
    for _ in range(n):
        await ch.publish("", queue, body, properties=props)
    await ch.wait_for_confirms()
    span.stop(n)
    await conn.close()
    return span


async def publish_aio_pika(uri: str, queue: str, n: int, body: bytes) -> Span:
    import aio_pika

    conn = await aio_pika.connect(uri)
    ch = await conn.channel(publisher_confirms=True)
    exchange = ch.default_exchange
    persistent = aio_pika.DeliveryMode.PERSISTENT
    span = Span().start()
    for start in range(0, n, CONFIRM_WINDOW):
        batch = min(CONFIRM_WINDOW, n - start)
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(body, delivery_mode=persistent), routing_key=queue)
                for _ in range(batch)
            )
        )
    span.stop(n)
    await conn.close()
    return span


def publish_pika(uri: str, queue: str, n: int, body: bytes) -> Span:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(uri))
    ch = conn.channel()
    ch.confirm_delivery()
    props = pika.BasicProperties(delivery_mode=2)
    span = Span().start()
    for _ in range(n):
        ch.basic_publish("", queue, body, properties=props)  # returns once confirmed; raises if nacked
    span.stop(n)
    conn.close()
    return span


# ---- worker process ---------------------------------------------------------------------------------

ASYNC_WORKERS = {
    "consume:ours": consume_ours,
    "consume:aio-pika": consume_aio_pika,
    "consume:aio-pika-callback": consume_aio_pika_callback,
    "consume:bare": consume_bare,
}
SYNC_WORKERS = {
    "consume:pika": consume_pika_blocking,
    "consume:pika-select": consume_pika_select,
}


def run_worker(args: argparse.Namespace) -> None:
    from protocol.loop import run  # uvloop, for our client and, for fairness, aio-pika and bare too

    role, _, client = args.worker.partition(":")
    body = make_body(args.size)
    n = args.messages

    def call() -> Span:
        if role == "publish":
            if client == "pika":
                return publish_pika(args.broker, args.queue, n, body)
            fn = publish_ours if client == "ours" else publish_aio_pika
            return run(fn(args.broker, args.queue, n, body))
        if args.worker in SYNC_WORKERS:
            return SYNC_WORKERS[args.worker](args.broker, args.queue, n)
        return run(ASYNC_WORKERS[args.worker](args.broker, args.queue, n))

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
                "peak_rss_kb": peak_rss_kb(),
            }
        )
    )


# ---- orchestration ------------------------------------------------------------------------------------


@dataclass
class Result:
    client: str
    role: str
    messages: int
    seconds: float
    cpu: float
    rss_before_kb: int
    peak_rss_kb: int

    @classmethod
    def from_worker(cls, client: str, role: str, r: dict[str, Any]) -> Result:
        return cls(client, role, r["messages"], r["seconds"], r["cpu"], r["rss_before_kb"], r["peak_rss_kb"])

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.messages if self.messages else float("inf")

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("inf")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Broker:
    """Queue housekeeping on the broker under test, with our client (outside every timing)."""

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

    def fresh_queue(self, tag: str) -> str:
        name = f"warren.bench.{tag}.{uuid.uuid4().hex[:8]}"

        async def go(_conn: Any, ch: Any) -> None:
            await ch.queue_declare(name, durable=True, arguments={"x-queue-type": "classic"})

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

    def fill(self, name: str, n: int, body: bytes) -> float:
        t0 = time.perf_counter()
        self._run(publish_ours(self.uri, name, n, body))
        return time.perf_counter() - t0


def spawn(args: argparse.Namespace, worker: str, queue: str, n: int, cprofile: str | None = None) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        worker,
        "--broker",
        args.broker,
        "--queue",
        queue,
        "--messages",
        str(n),
        "--size",
        str(args.size),
    ]
    if cprofile:
        cmd += ["--cprofile", cprofile]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=WORKER_TIMEOUT, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"worker {worker} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_consumer(args: argparse.Namespace, broker: Broker, client: str, body: bytes) -> Result:
    n = args.messages
    queue = broker.fresh_queue(f"consume.{client}")
    try:
        fill_s = broker.fill(queue, n, body)
        time.sleep(SETTLE_SECONDS)
        log(f"  filled {queue} with {n} messages in {fill_s:.1f}s; {client} consumes")
        r = spawn(args, f"consume:{client}", queue, n)
        left = broker.depth(queue)
        if left:
            log(f"  WARNING: {left} messages left in {queue} after the {client} consumer run")
    finally:
        broker.delete(queue)
    return Result.from_worker(client, "consumer", r)


def measure_publisher(args: argparse.Namespace, broker: Broker, client: str) -> Result:
    n = min(args.messages, args.pika_publish_messages) if client == "pika" else args.messages
    queue = broker.fresh_queue(f"publish.{client}")
    try:
        log(f"  {client} publishes {n} messages with confirms")
        r = spawn(args, f"publish:{client}", queue, n)
        depth = broker.depth(queue)
        if depth != n:
            log(f"  WARNING: {queue} holds {depth} messages after the {client} publisher run, expected {n}")
    finally:
        broker.delete(queue)
    return Result.from_worker(client, "publisher", r)


def rotate(clients: list[str], by: int) -> list[str]:
    if not clients:
        return clients
    by %= len(clients)
    return clients[by:] + clients[:by]


def best(results: list[Result]) -> Result:
    return max(results, key=lambda r: r.rate)


def print_table(consumers: dict[str, Result], publishers: dict[str, Result], args: argparse.Namespace) -> None:
    header = (
        f"{'client':<18} {'role':<10} {'messages':>9} {'seconds':>8} {'msgs/s':>9} {'ours/this':>10} "
        f"{'client CPU':>10} {'CPU us/msg':>10} {'peak RSS':>9}"
    )
    print(header)
    print("-" * len(header))
    for group in (consumers, publishers):
        ours = group.get("ours")
        for r in group.values():
            ratio = f"{ours.rate / r.rate:.2f}x" if ours else "-"
            print(
                f"{r.client:<18} {r.role:<10} {r.messages:>9} {r.seconds:>8.2f} {r.rate:>9.0f} {ratio:>10} "
                f"{100 * r.cpu / r.seconds:>9.0f}% {r.cpu_us:>10.1f} {r.peak_rss_kb / 1024:>7.1f}MB"
            )
    print(
        "ours/this: our msgs/s divided by this client's. client CPU: the client process's CPU time over the run's\n"
        "wall time (the broker runs on the same host and takes most of the rest). CPU us/msg: the client's CPU time\n"
        "per message, what the client costs whatever the broker's pace. peak RSS: the worker process's VmHWM."
    )
    if "pika" in publishers:
        print(
            f"pika publisher: BlockingConnection confirms one message at a time, so it ran "
            f"{publishers['pika'].messages} messages, not {args.messages}."
        )


def fastest(group: dict[str, Result], family: str) -> Result | None:
    """The fastest run of a client family: 'pika' covers pika (blocking) and pika-select."""
    runs = [r for name, r in group.items() if name == family or name.startswith(family + "-")]
    return max(runs, key=lambda r: r.rate) if runs else None


def print_targets(consumers: dict[str, Result], publishers: dict[str, Result]) -> None:
    rate_lines: list[str] = []
    cpu_lines: list[str] = []

    def check(group: dict[str, Result], role: str, family: str, want: float, label: str) -> None:
        ours, them = group.get("ours"), fastest(group, family)
        if ours is None or them is None:
            return
        got = ours.rate / them.rate
        rate_lines.append(
            f"  our {role} {label.format(them.client)}: {got:.2f}x "
            f"({ours.rate:.0f} vs {them.rate:.0f} msgs/s)  {'met' if got >= want else 'MISSED'}"
        )
        runs = [r for name, r in group.items() if name == family or name.startswith(family + "-")]
        leanest = min(runs, key=lambda r: r.cpu_us)
        got = leanest.cpu_us / ours.cpu_us
        cpu_lines.append(
            f"  our {role} {label.format(leanest.client)}: {got:.2f}x "
            f"({ours.cpu_us:.1f} vs {leanest.cpu_us:.1f} us/msg)  {'met' if got >= want else 'MISSED'}"
        )

    check(consumers, "consumer", "aio-pika", 3.0, ">= 3x {}")
    check(consumers, "consumer", "pika", 1.2, ">= 1.2x {}")
    check(consumers, "consumer", "bare", 0.9, ">= 90% of {}")
    check(publishers, "publisher", "aio-pika", 3.0, ">= 3x {}")
    if rate_lines:
        print("\ntargets, in msgs/s (against the fastest way of each other client):")
        print("\n".join(rate_lines))
        print(
            "the same targets in client CPU per message (what the ratio would be if the broker kept up with every "
            "client;\nagainst the leanest way of each other client):"
        )
        print("\n".join(cpu_lines))


def print_memory(consumers: dict[str, Result], args: argparse.Namespace) -> None:
    ours = consumers.get("ours")
    if ours is None:
        return
    backlog_mb = args.messages * args.size / 2**20
    print(
        f"\nour consumer memory: RSS {ours.rss_before_kb / 1024:.1f}MB before consuming, peak "
        f"{ours.peak_rss_kb / 1024:.1f}MB (+{(ours.peak_rss_kb - ours.rss_before_kb) / 1024:.1f}MB) "
        f"while draining a backlog of {args.messages} messages ({backlog_mb:.0f}MB of bodies), prefetch {PREFETCH}"
    )


def profile_ours(args: argparse.Namespace, broker: Broker, body: bytes) -> None:
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        for role in ("consume", "publish"):
            queue = broker.fresh_queue(f"profile.{role}")
            path = os.path.join(tmp, f"{role}.prof")
            try:
                if role == "consume":
                    broker.fill(queue, args.messages, body)
                spawn(args, f"{role}:ours", queue, args.messages, cprofile=path)
            finally:
                broker.delete(queue)
            print(
                f"\ncProfile of our {role.replace('consume', 'consumer').replace('publish', 'publisher')} "
                f"({args.messages} messages), top 25 by own time:"
            )
            stats = pstats.Stats(path, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)


def run_all(args: argparse.Namespace) -> None:
    broker = Broker(args.broker)
    body = make_body(args.size)
    import aio_pika
    import pika
    import uvloop

    only = set(args.only.split(",")) if args.only else None
    consumers = [c for c in CONSUMERS if only is None or f"consume:{c}" in only or c in only]
    publishers = [c for c in PUBLISHERS if only is None or f"publish:{c}" in only or c in only]
    print(
        f"warren amqp_throughput: {args.messages} persistent messages of {args.size} bytes, durable classic queues, "
        f"prefetch {PREFETCH}, multiple-ack every {ACK_EVERY}, confirm window {CONFIRM_WINDOW}, "
        f"best of {args.repeat}"
    )
    print(
        f"RabbitMQ {broker.version()}, Python {platform.python_version()}, uvloop {uvloop.__version__}, "
        f"aio-pika {aio_pika.__version__}, pika {pika.__version__}, {os.cpu_count()} CPUs (broker on the same host), "
        f"load average {os.getloadavg()[0]:.2f} at start\n"
    )
    sys.stdout.flush()
    consumer_runs: dict[str, list[Result]] = {}
    publisher_runs: dict[str, list[Result]] = {}
    for i in range(args.repeat):
        # round-robin, each round starting one client further on, so drift in the broker's state and the
        # position in a round hit every client alike
        log(f"round {i + 1} of {args.repeat}")
        for client in rotate(consumers, i):
            r = measure_consumer(args, broker, client, body)
            log(f"  -> {r.client} consumer: {r.rate:.0f} msgs/s, client CPU {100 * r.cpu / r.seconds:.0f}%")
            consumer_runs.setdefault(client, []).append(r)
        for client in rotate(publishers, i):
            r = measure_publisher(args, broker, client)
            log(f"  -> {r.client} publisher: {r.rate:.0f} msgs/s, client CPU {100 * r.cpu / r.seconds:.0f}%")
            publisher_runs.setdefault(client, []).append(r)
    best_consumers = {c: best(consumer_runs[c]) for c in consumers}  # table in the fixed order
    best_publishers = {c: best(publisher_runs[c]) for c in publishers}
    print_table(best_consumers, best_publishers, args)
    print_targets(best_consumers, best_publishers)
    print_memory(best_consumers, args)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.profile:
        profile_ours(args, broker, body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--broker", help="AMQP URI of the broker to use (default: start a private node)")
    p.add_argument("--messages", type=int, default=200_000, help="messages per run (default 200000)")
    p.add_argument("--size", type=int, default=256, help="body size in bytes (default 256)")
    p.add_argument(
        "--pika-publish-messages",
        type=int,
        default=PIKA_PUBLISH_MESSAGES,
        help=f"messages for pika's one-at-a-time confirmed publisher (default {PIKA_PUBLISH_MESSAGES})",
    )
    p.add_argument("--repeat", type=int, default=3, help="rounds over every client; each client's best counts")
    p.add_argument("--only", help="comma-separated subset, e.g. ours,bare or consume:ours,publish:aio-pika")
    p.add_argument("--profile", action="store_true", help="then cProfile our consumer and publisher once each")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--queue", help=argparse.SUPPRESS)
    p.add_argument("--cprofile", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        run_worker(args)
        return
    if args.broker:
        run_all(args)
        return

    from bridge.localnode import LocalNode

    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp:
        log(f"starting a private RabbitMQ node in {tmp}")
        node = LocalNode(Path(tmp) / "node")
        try:
            node.start()
            args.broker = node.amqp_uri
            run_all(args)
        finally:
            node.destroy()


if __name__ == "__main__":
    main()
