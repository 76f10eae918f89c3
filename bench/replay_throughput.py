"""Replay throughput: `warren replay` from an archive into a queue and a stream, against plain publishers.

    .venv/bin/python bench/replay_throughput.py [--messages N] [--size BYTES] [--repeat R] [--no-s3] [--profile]
    .venv/bin/python bench/replay_throughput.py --broker AMQP_URI [--stream-uri URI]

Without --broker a private RabbitMQ node is started in a temporary directory (free loopback ports) and
destroyed at the end; the system broker is never used unless you pass its URIs.

The archives are made first, with no broker: `SegmentWriter` on a `LocalSink` (the writer's default
roll, 64 MiB segments, or every --segment-records records), one record per
`protocol.core.message.Message` (a random body of --size bytes each, delivery-mode 2), source queue
"bench.replay"; and for the stream case a stream source "bench.replay.stream" whose records are those
bodies AMQP 1.0 encoded (rstream's AMQPMessage), with contiguous offsets. Unless --no-s3, the queue
archive's files are then copied as they are into a bucket of S3: moto's server (the test suite's
emulator, in memory, one request at a time) behind bench/latency_proxy.py, a loopback proxy that holds
every chunk a client sends for --s3-latency-ms (20) before forwarding it, so every request the replay
makes (listings, GETs) takes 20 ms longer.

Queue. Before every run the durable classic queue "bench.replay" is deleted and declared again, empty;
after it, its depth is checked. Timed:

- warren: `run_replay(ReplayOptions(archive, target))` from the call to its return: it opens the
  archive, reads and decodes the segments, connects and publishes every record mandatory, with
  publisher confirms and at most 1000 unconfirmed, and waits for the last confirm.
- warren-s3: the same, from the archive in S3 through the proxy
  (s3://<bucket>/queue?endpoint-url=http://127.0.0.1:<proxy port>).
- bare: the ceiling for a Python publisher with confirms (bench/common.py's BarePublisher): an asyncio
  Protocol that does the handshake with pamqp and confirm.select, then writes each message's three
  frames itself (basic.publish mandatory to the default exchange, a header with delivery-mode 2, the
  body), at most 1000 unconfirmed, and counts basic.ack frames (multiple) by walking frame boundaries.
  The same bodies, from memory; its clock runs from confirm.select-ok to the last confirm.
- aio-pika, for comparison: the same bodies, already in memory, published persistent and mandatory
  (its default) to the default exchange with publisher confirms and at most 1000 in flight, both ways
  it is idiomatically written: `gather` over batches of 1000, and a sliding window of 1000 tasks. Its
  connection is opened before the clock starts.
- warren-client, for reference: warren's own AMQP client publishing those bodies from memory the way
  the replayer publishes (mandatory, confirms, 1000 in flight), without the archive.

Targets printed: warren replay >= 0.9x bare, from the local sink and from S3 with the added latency;
warren against aio-pika's faster idiom is printed for information.

Stream (for information). Before every run the stream "bench.replay.stream" is deleted and declared
again (warren's replay names its producer and uses the original offsets as publishing ids, so a
stream that already holds them would deduplicate them all). warren: `run_replay` with the stream
archive and --target-stream-uri. Baseline: rstream's `Producer.send_batch` with the same encoded
messages in memory, batches of 500, at most 5000 unconfirmed (as warren's stream target), until all
are confirmed.

Each run is its own fresh worker process on uvloop; rounds (--repeat) go round-robin and each client
keeps its best. This prints figures; it asserts nothing about timing. --profile then runs warren's
replays once more under cProfile and prints the hotspots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import slow_s3
from common import (
    USAGE_HEADER,
    Broker,
    Result,
    Span,
    filesystem_of,
    log,
    print_hotspots,
    private_node,
    publish_bare,
    report_worker,
    rotate,
    spawn_worker,
    stream_endpoint,
    usage_columns,
    version_of,
)
from slow_s3 import SlowS3

QUEUE = "bench.replay"
STREAM = "bench.replay.stream"
CONFIRM_WINDOW = 1000
STREAM_BATCH = 500
STREAM_WINDOW = 5000
WORKER_TIMEOUT = 3600
TARGET = 0.9  # warren replay, from the local sink and from S3 with the added latency, >= 0.9x the bare publisher

WARREN_S3 = "warren-s3"  # warren replaying the same archive from S3 (moto) behind the latency proxy
QUEUE_CLIENTS = ("warren", WARREN_S3, "bare", "aio-pika", "aio-pika-window", "warren-client")
STREAM_CLIENTS = ("warren-stream", "rstream")


def make_bodies(n: int, size: int) -> list[bytes]:
    rng = random.Random(0)
    return [rng.randbytes(size) for _ in range(n)]


def encode_stream_messages(bodies: list[bytes]) -> list[bytes]:
    from rstream import AMQPMessage

    return [bytes(AMQPMessage(body=body)) for body in bodies]


# ---- making the archives (no broker) ------------------------------------------------------------------


async def write_archive(root: Path, stream: bool, payloads: list[bytes], segment_records: int | None) -> None:
    from bridge.archive.record import Source, SourceKind
    from bridge.archiver.writer import RollPolicy, SegmentWriter
    from protocol.core.message import Message, encode_properties
    from sinks.local import LocalSink

    sink = LocalSink(root)
    await sink.check()
    source = Source("/", SourceKind.STREAM, STREAM) if stream else Source("/", SourceKind.QUEUE, QUEUE)
    policy = RollPolicy(max_records=segment_records) if segment_records else RollPolicy()
    writer = SegmentWriter(sink, source, policy=policy)
    await writer.start()
    raw = encode_properties({"delivery_mode": 2})
    chunk_ts_ms = time.time_ns() // 1_000_000
    for i, payload in enumerate(payloads):
        if stream:
            writer.append_stream(payload, i, chunk_ts_ms)
        else:
            writer.append_message(Message(payload, raw, exchange="", routing_key=QUEUE))
        if not writer.has_room:
            await writer.wait_for_room()
    await writer.close()
    await sink.close()


def make_archives(workdir: Path, n: int, size: int, segment_records: int | None) -> tuple[Path, Path, str]:
    from protocol.loop import run

    t0 = time.perf_counter()
    bodies = make_bodies(n, size)
    queue_archive, stream_archive = workdir / "queue-archive", workdir / "stream-archive"
    run(write_archive(queue_archive, False, bodies, segment_records))
    encoded = encode_stream_messages(bodies)
    run(write_archive(stream_archive, True, encoded, segment_records))
    files = list(queue_archive.rglob("*.wseg")) + list(stream_archive.rglob("*.wseg"))
    note = (
        f"archives made in {time.perf_counter() - t0:.1f}s: queue {_tree_mb(queue_archive):.1f} MiB, stream "
        f"{_tree_mb(stream_archive):.1f} MiB ({len(encoded[0])} bytes per encoded stream message), "
        f"{len(files)} segments"
    )
    return queue_archive, stream_archive, note


def _tree_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


# ---- workers ------------------------------------------------------------------------------------------


async def replay_warren(args: argparse.Namespace) -> Span:
    from bridge.replay.service import ReplayOptions, run_replay

    stream = args.worker == "warren-stream"
    options = ReplayOptions(
        archive=args.archive, target=args.broker, target_stream_uri=args.stream_uri if stream else None
    )
    span = Span().start()
    outcomes = await run_replay(options)
    replayed = sum(o.replayed for o in outcomes)
    span.stop(replayed)
    return span


async def publish_warren_client(args: argparse.Namespace) -> Span:
    """For reference, not a target: warren's own AMQP client publishing the bodies from memory, as the
    replayer does (mandatory, confirms, 1000 in flight) but without the archive: the pace of this broker."""
    from protocol import connect
    from protocol.core.message import encode_properties

    bodies = make_bodies(args.messages, args.size)
    raw = encode_properties({"delivery_mode": 2})
    conn = await connect(args.broker)
    ch = await conn.channel()
    await ch.confirm_select(window=CONFIRM_WINDOW)
    span = Span().start()
    for body in bodies:
        await ch.publish("", QUEUE, body, raw_properties=raw, mandatory=True)
    await ch.wait_for_confirms()
    span.stop(len(bodies))
    await conn.close()
    return span


async def publish_bare_window(args: argparse.Namespace) -> Span:
    """The ceiling for a Python publisher with confirms (bench/common.py's BarePublisher): frames written
    by hand, 1000 unconfirmed at most, acks counted by walking frame boundaries."""
    return await publish_bare(args.broker, QUEUE, make_bodies(args.messages, args.size), CONFIRM_WINDOW)


async def publish_aio_pika(args: argparse.Namespace) -> Span:
    """gather over batches of 1000: at most 1000 unconfirmed, but each batch waits for its slowest confirm."""
    import aio_pika

    bodies = make_bodies(args.messages, args.size)
    conn = await aio_pika.connect(args.broker)
    ch = await conn.channel(publisher_confirms=True)
    exchange = ch.default_exchange
    persistent = aio_pika.DeliveryMode.PERSISTENT
    span = Span().start()
    for start in range(0, len(bodies), CONFIRM_WINDOW):
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(body, delivery_mode=persistent), routing_key=QUEUE)
                for body in bodies[start : start + CONFIRM_WINDOW]
            )
        )
    span.stop(len(bodies))
    await conn.close()
    return span


async def publish_aio_pika_window(args: argparse.Namespace) -> Span:
    """A sliding window: a task per publish, a new one as soon as any of the 1000 in flight is confirmed."""
    import aio_pika

    bodies = make_bodies(args.messages, args.size)
    conn = await aio_pika.connect(args.broker)
    ch = await conn.channel(publisher_confirms=True)
    exchange = ch.default_exchange
    persistent = aio_pika.DeliveryMode.PERSISTENT
    window = asyncio.Semaphore(CONFIRM_WINDOW)
    failures: list[BaseException] = []

    async def one(body: bytes) -> None:
        try:
            await exchange.publish(aio_pika.Message(body, delivery_mode=persistent), routing_key=QUEUE)
        except BaseException as err:
            failures.append(err)
        finally:
            window.release()

    tasks: set[asyncio.Task[None]] = set()
    span = Span().start()
    for body in bodies:
        await window.acquire()
        task = asyncio.create_task(one(body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    span.stop(len(bodies))
    await conn.close()
    if failures:
        raise RuntimeError(f"{len(failures)} aio-pika publishes failed, the first: {failures[0]!r}")
    return span


async def publish_rstream(args: argparse.Namespace) -> Span:
    """send_batch of 500, at most 5000 unconfirmed, until every message is confirmed."""
    from rstream import Producer
    from rstream.utils import RawMessage

    encoded = encode_stream_messages(make_bodies(args.messages, args.size))
    producer = Producer(**stream_endpoint(args.stream_uri))
    await producer.start()
    confirmed = 0
    refused: list[Any] = []
    room = asyncio.Event()
    room.set()
    sent = 0

    def on_confirm(status: Any) -> None:
        nonlocal confirmed
        if status.is_confirmed:
            confirmed += 1
        else:
            refused.append(status)
        if sent - confirmed < STREAM_WINDOW or refused:
            room.set()

    span = Span().start()
    for start in range(0, len(encoded), STREAM_BATCH):
        batch = [RawMessage(m) for m in encoded[start : start + STREAM_BATCH]]
        sent += len(batch)
        await producer.send_batch(STREAM, batch, on_publish_confirm=on_confirm)
        while sent - confirmed >= STREAM_WINDOW and not refused:
            room.clear()
            await room.wait()
    while confirmed < sent and not refused:
        room.clear()
        await room.wait()
    span.stop(confirmed)
    await producer.close()
    if refused:
        raise RuntimeError(f"rstream: {len(refused)} messages refused")
    return span


WORKERS = {
    "warren": replay_warren,
    WARREN_S3: replay_warren,
    "warren-stream": replay_warren,
    "warren-client": publish_warren_client,
    "bare": publish_bare_window,
    "aio-pika": publish_aio_pika,
    "aio-pika-window": publish_aio_pika_window,
    "rstream": publish_rstream,
}


def run_worker(args: argparse.Namespace) -> None:
    from protocol.loop import run  # uvloop for every client

    def call() -> Span:
        return run(WORKERS[args.worker](args))

    report_worker(call, args.cprofile)


# ---- orchestration ------------------------------------------------------------------------------------


def spawn(args: argparse.Namespace, client: str, archive: str | None, cprofile: str | None = None) -> dict[str, Any]:
    argv = ["--worker", client, "--broker", args.broker]
    argv += ["--messages", str(args.messages), "--size", str(args.size)]
    for flag, value in (("--stream-uri", args.stream_uri), ("--archive", archive), ("--cprofile", cprofile)):
        if value:
            argv += [flag, str(value)]
    return spawn_worker(str(Path(__file__).resolve()), argv, client, WORKER_TIMEOUT)


def reset(broker: Broker, stream: bool) -> None:
    name = STREAM if stream else QUEUE
    broker.delete(name)  # queue.delete of a queue that does not exist succeeds
    broker.declare(name, stream=stream)


def measure(
    args: argparse.Namespace, broker: Broker, client: str, archive: str | None, cprofile: str | None = None
) -> Result:
    stream = client in STREAM_CLIENTS
    reset(broker, stream)
    time.sleep(0.5)
    r = Result.from_worker(
        client, CONFIRM_WINDOW if not stream else STREAM_WINDOW, spawn(args, client, archive, cprofile)
    )
    if r.messages != args.messages:
        log(f"  WARNING: {client} published {r.messages} messages, expected {args.messages}")
    if not stream:
        depth = broker.depth(QUEUE)
        if depth != args.messages:
            log(f"  WARNING: {QUEUE} holds {depth} messages after the {client} run, expected {args.messages}")
    return r


def print_table(title: str, results: list[Result]) -> None:
    header = (
        f"{'client':<16} {'in flight':>9} {'messages':>9} {'seconds':>8} {'msgs/s':>9} {'warren/this':>11} "
        + USAGE_HEADER
    )
    print(title)
    print(header)
    print("-" * len(header))
    ours = results[0] if results and results[0].client.startswith("warren") else None
    for r in results:
        ratio = f"{ours.rate / r.rate:.2f}x" if ours else "-"
        print(
            f"{r.client:<16} {r.prefetch:>9} {r.messages:>9} {r.seconds:>8.2f} {r.rate:>9.0f} {ratio:>11} "
            + usage_columns(r)
        )


def print_targets(best: dict[str, Result], s3: SlowS3 | None) -> None:
    bare = best.get("bare")
    lines = []
    for client, where in (
        ("warren", "the local sink"),
        (WARREN_S3, f"S3 with {1000 * s3.delay:g} ms per request" if s3 else ""),
    ):
        ours = best.get(client)
        if ours is None or bare is None:
            continue
        got = ours.rate / bare.rate
        lines.append(
            f"target: warren replay from {where} >= {TARGET:g}x the bare confirmed publisher: {got:.2f}x "
            f"({ours.rate:.0f} vs {bare.rate:.0f} msgs/s)  {'met' if got >= TARGET else 'MISSED'}"
        )
    ours = best.get("warren")
    peers = [best[c] for c in ("aio-pika", "aio-pika-window") if c in best]
    if ours and peers:
        peer = max(peers, key=lambda r: r.rate)
        lines.append(
            f"for information: warren replay from the local sink against aio-pika's faster idiom ({peer.client}): "
            f"{ours.rate / peer.rate:.2f}x ({ours.rate:.0f} vs {peer.rate:.0f} msgs/s)"
        )
    if lines:
        print("\n" + "\n".join(lines))


def run_all(args: argparse.Namespace, workdir: Path, s3: SlowS3 | None) -> None:
    import aio_pika
    import rstream
    import uvloop

    broker = Broker(args.broker)
    if args.stream_uri is None:
        from bridge.config import derived_uri, resolve_stream_uri
        from protocol.loop import run

        management = args.management_uri or derived_uri(args.broker, "http", 15672, keep_vhost=False)
        args.stream_uri = run(resolve_stream_uri(args.broker, management))
    only = set(args.only.split(",")) if args.only else None
    queue_clients = [
        c for c in QUEUE_CLIENTS if (only is None or c in only or "queue" in only) and (c != WARREN_S3 or s3)
    ]
    stream_clients = [c for c in STREAM_CLIENTS if only is None or c in only or "stream" in only]
    queue_archive, stream_archive, note = make_archives(workdir, args.messages, args.size, args.segment_records)
    fs = filesystem_of(workdir)
    archives = {"warren": queue_archive.as_uri(), "warren-stream": stream_archive.as_uri()}
    bucket = None
    if s3 is not None and WARREN_S3 in queue_clients:
        bucket = s3.create_bucket()
        copied = s3.put_tree(queue_archive, bucket, "queue")
        archives[WARREN_S3] = s3.uri(bucket, "queue")
        note += f"; the queue archive copied into S3 ({copied} objects)"
    print(
        f"warren replay_throughput: {args.messages} persistent messages of {args.size} bytes (random bodies), "
        f"into queue {QUEUE!r} (durable classic, mandatory, confirms, {CONFIRM_WINDOW} in flight) and stream "
        f"{STREAM!r}; archive on {fs}"
        + (f", segments of {args.segment_records} records" if args.segment_records else "")
        + f"; best of {args.repeat}"
    )
    print(note)
    if s3 is not None and bucket is not None:
        print(
            f"{WARREN_S3}: the same queue archive read from S3: moto (in memory, one request at a time) behind a "
            f"loopback proxy holding every chunk a client sends for {1000 * s3.delay:g} ms"
        )
    print(
        f"RabbitMQ {broker.version()}, Python {platform.python_version()}, uvloop {uvloop.__version__}, "
        f"aio-pika {aio_pika.__version__}, rstream {version_of(rstream)}, {os.cpu_count()} CPUs (broker on the same "
        f"host), load average {os.getloadavg()[0]:.2f} at start\n"
    )
    sys.stdout.flush()
    runs: dict[str, list[Result]] = {}
    try:
        for i in range(args.repeat):
            log(f"round {i + 1} of {args.repeat}")
            for client in rotate(queue_clients, i) + rotate(stream_clients, i):
                r = measure(args, broker, client, archives.get(client))
                log(f"  -> {client}: {r.rate:.0f} msgs/s, client CPU {100 * r.cpu / r.seconds:.0f}%")
                runs.setdefault(client, []).append(r)
        best = {c: max(rs, key=lambda r: r.rate) for c, rs in runs.items()}
        queue_results = [best[c] for c in queue_clients]
        stream_results = [best[c] for c in stream_clients]
        if queue_results:
            print_table(f"queue: {args.messages} messages published with confirms", queue_results)
            print_targets(best, s3)
        if stream_results:
            print()
            print_table(f"stream (for information): {args.messages} messages published with confirms", stream_results)
        print(
            "\nin flight: the most unconfirmed messages. client CPU: the client process's CPU time over the run's\n"
            "wall time (the broker runs on the same host). warren's time includes opening and reading the archive\n"
            "and connecting; the baselines connect before their clock starts and publish from memory."
        )
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        if args.profile:
            profile_warren(args, broker, archives, queue_clients, stream_clients)
    finally:
        for stream in (False, True):
            broker.delete(STREAM if stream else QUEUE)
        if s3 is not None and bucket is not None:
            s3.remove_bucket(bucket)


def profile_warren(
    args: argparse.Namespace,
    broker: Broker,
    archives: dict[str, str],
    queue_clients: list[str],
    stream_clients: list[str],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for client in [c for c in ("warren", WARREN_S3, "warren-stream") if c in queue_clients + stream_clients]:
            path = os.path.join(tmp, f"{client}.prof")
            r = measure(args, broker, client, archives[client], cprofile=path)
            print(f"\ncProfile of {client} replay ({args.messages} messages, {r.rate:.0f} msgs/s under the profiler):")
            print_hotspots(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--broker", help="AMQP URI of the broker to use (default: start a private node)")
    p.add_argument("--management-uri", help="its management API, to find the stream port (default: port 15672)")
    p.add_argument("--stream-uri", help="its stream endpoint (default: asked of the management API)")
    p.add_argument("--messages", type=int, default=200_000, help="messages per run (default 200000)")
    p.add_argument("--size", type=int, default=256, help="body size in bytes (default 256)")
    p.add_argument("--repeat", type=int, default=2, help="rounds over every client; each keeps its best (default 2)")
    p.add_argument(
        "--segment-records",
        type=int,
        help="roll the archives' segments every N records (default: the writer's own roll, 64 MiB)",
    )
    p.add_argument(
        "--only",
        help="comma-separated subset: warren, warren-s3, bare, aio-pika, aio-pika-window, warren-client, queue, "
        "warren-stream, rstream, stream",
    )
    p.add_argument("--no-s3", action="store_true", help="leave out warren-s3 (moto behind the latency proxy)")
    p.add_argument(
        "--s3-latency-ms", type=float, default=1000 * slow_s3.DEFAULT_DELAY, help="added per request (default 20)"
    )
    p.add_argument("--workdir", help="where the archives go (default: the system's temporary directory)")
    p.add_argument("--profile", action="store_true", help="then cProfile warren's queue and stream replays")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--archive", help=argparse.SUPPRESS)
    p.add_argument("--cprofile", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        run_worker(args)
        return
    only = set(args.only.split(",")) if args.only else None
    s3_wanted = not args.no_s3 and (only is None or bool(only & {WARREN_S3, "queue"}))
    with (
        tempfile.TemporaryDirectory(prefix="warren-bench-replay-", dir=args.workdir) as tmp,
        contextlib.ExitStack() as stack,
    ):
        s3 = None
        if s3_wanted:
            if (why := slow_s3.missing()) is not None:
                print(f"{WARREN_S3} skipped: {why}")
            else:
                s3 = stack.enter_context(slow_s3.slow_s3(Path(tmp), args.s3_latency_ms / 1000))
        if args.broker:
            run_all(args, Path(tmp), s3)
            return
        node = stack.enter_context(private_node(Path(tmp)))
        args.broker = node.amqp_uri
        args.stream_uri = args.stream_uri or node.stream_uri
        run_all(args, Path(tmp), s3)


if __name__ == "__main__":
    main()
