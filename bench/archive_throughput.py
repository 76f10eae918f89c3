"""Archiving throughput: warren draining a queue backlog into an archive, against clients that only consume.

    .venv/bin/python bench/archive_throughput.py [--messages N] [--prefetch 1000,2000] [--rss] [--no-s3] [--profile]
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
- warren-s3 (unless --no-s3): the same at --s3-prefetch (2000), into a fresh bucket of S3: moto's
  server (the test suite's emulator, in memory, one request at a time) behind bench/latency_proxy.py,
  a loopback proxy that holds every chunk a client sends for --s3-latency-ms (20) before forwarding
  it: every request takes 20 ms longer, a PUT 40 ms (botocore sends `Expect: 100-continue` and waits
  for the answer before the body, as it would over a real link). Its sink URI is
  s3://<bucket>/bench?endpoint-url=http://127.0.0.1:<proxy port>, with bench credentials in the
  environment. Compared with warren into the local sink at the same prefetch.
- aio-pika (queue iterator, and callback), pika (BlockingConnection, and SelectConnection), and bare
  (handshake with pamqp, then only frame boundaries, count basic.deliver, multiple-ack every 100):
  consume and acknowledge (multiple-ack every 100), store nothing. The target is checked against the
  faster idiom of each client. These consumers are bench/amqp_throughput.py's, from bench/common.py.

Every consumer runs at every --prefetch, each in its own fresh worker process on uvloop (pika on its
own loops), so the comparison at one prefetch is like for like. Rounds (--repeat) go round-robin and
each (client, prefetch) keeps its best round, as the broker shares the host. Targets printed, at each
prefetch: warren >= 3x aio-pika, > pika, >= 0.9x bare; warren-s3 >= 0.7x warren on the local sink.

Stream. One stream of N messages (filled once, through AMQP with warren's publisher) is read from the
first offset by warren (`run_archiver` with a stream source, offset first, same archive settings: the
clock stops when record N is committed, so the segment-max-age roll of the last segment counts) and by
a bare rstream consumer that only counts (decoder=None, rstream's default credit). Target printed:
warren >= 0.5x rstream.

--rss: peak RSS (the child's own VmHWM from /proc/<pid>/status, read by the child at its end; not
ru_maxrss, which on Linux inherits the parent's RSS across fork and exec) of a worker process running
warren's archiver over a queue backlog of --rss-messages (default 1,000,000) at --rss-prefetch (default
the largest --prefetch), and of one archiving a fresh stream of as many messages from its first offset;
each against 150 MB.

This prints figures; it asserts nothing about timing. --profile then runs warren's queue and stream
archiving once more under cProfile and prints the hotspots.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import slow_s3
from common import (
    ACK_EVERY,
    SETTLE_SECONDS,
    USAGE_HEADER,
    Broker,
    Result,
    Span,
    consume_aio_pika,
    consume_aio_pika_callback,
    consume_bare,
    consume_pika_blocking,
    consume_pika_select,
    fastest,
    filesystem_of,
    log,
    print_hotspots,
    private_node,
    proc_status_kb,
    report_worker,
    rotate,
    spawn_worker,
    stream_endpoint,
    usage_columns,
    version_of,
)
from slow_s3 import SlowS3

SEGMENT_MAX_AGE = 1.0
POLL_SECONDS = 0.002  # how often the warren worker looks at its writer's committed sequence
WORKER_TIMEOUT = 3600
DEFAULT_PREFETCHES = "1000,2000"
S3_PREFETCH = 2000

WARREN = "warren"
WARREN_S3 = "warren-s3"  # warren archiving into S3 (moto) behind the latency proxy
QUEUE_CLIENTS = (WARREN, "aio-pika", "aio-pika-callback", "pika", "pika-select", "bare")
STREAM_CLIENTS = ("warren-stream", "rstream")

TARGETS = (  # (family, factor, label): warren's msgs/s >= factor x the family's fastest idiom
    ("aio-pika", 3.0, ">= 3x {}"),
    ("pika", 1.0, "> {}"),
    ("bare", 0.9, ">= 0.9x {}"),
)
S3_TARGET = 0.7  # warren into S3 with the added latency >= 0.7x warren into the local sink, same prefetch
STREAM_TARGET = 0.5
RSS_TARGET_MB = 150
BODY_POOL = 8192


def make_bodies(size: int, count: int = BODY_POOL) -> list[bytes]:
    """Distinct random bodies, used in turn: a 1 MiB zstd block holds no two alike, so the archive
    compresses what real (incompressible) payloads would, not one body repeated."""
    rng = random.Random(0)
    return [rng.randbytes(size) for _ in range(count)]


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
    sink_uri = args.sink
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
    writer_factory = getattr(service, "_writer_factory", None)
    if callable(writer_factory):

        def capture(*a: Any, **kw: Any) -> Any:
            make = writer_factory(*a, **kw)

            def made(on_durable: Any) -> Any:
                w = make(on_durable)
                writers.append(w)
                return w

            return made

        service._writer_factory = capture  # type: ignore[attr-defined]

    poll_sink = open_sink(sink_uri)
    stopping = asyncio.Event()
    t_call, c_call = time.perf_counter(), time.process_time()
    rss_before = proc_status_kb("VmRSS")
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
    segments = [info async for info in poll_sink.list("") if info.key.endswith(".wseg")]
    await poll_sink.close()
    span.extra = {
        "start_s": t0 - t_call,
        "appended_s": (appended_at - t0) if appended_at is not None else None,
        "stop_s": stopped_s,
        "checkpoint_seq": checkpoint.last_seq if checkpoint else 0,
        "segments": len(segments),
        "archive_bytes": sum(info.size for info in segments),
    }
    return span


async def count_rstream(stream_uri: str, stream: str, n: int) -> Span:
    """A bare rstream consumer from the first offset that only counts: decoder=None, default credit."""
    from rstream import Consumer, ConsumerOffsetSpecification, OffsetType

    consumer = Consumer(**stream_endpoint(stream_uri))
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
        if client in (WARREN, WARREN_S3, "warren-stream"):
            return run(archive_warren(args))
        if client == "rstream":
            return run(count_rstream(args.stream_uri, args.queue, args.messages))
        if client in SYNC_CONSUMERS:
            return SYNC_CONSUMERS[client](args.broker, args.queue, args.messages, args.prefetch)
        return run(ASYNC_CONSUMERS[client](args.broker, args.queue, args.messages, args.prefetch))

    report_worker(call, args.cprofile)


# ---- orchestration ------------------------------------------------------------------------------------


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
    argv = ["--worker", client, "--broker", args.broker, "--queue", queue, "--messages", str(n)]
    argv += ["--size", str(args.size), "--prefetch", str(prefetch or 0)]
    for flag, value in (
        ("--management-uri", args.management_uri),
        ("--stream-uri", args.stream_uri),
        ("--sink", sink),
        ("--cprofile", cprofile),
    ):
        if value:
            argv += [flag, value]
    return spawn_worker(str(Path(__file__).resolve()), argv, client, WORKER_TIMEOUT)


@contextlib.contextmanager
def fresh_archive(args: argparse.Namespace, client: str, s3: SlowS3 | None) -> Iterator[str | None]:
    """Where one run archives, emptied or removed afterwards: a fresh temporary directory for warren, a
    fresh bucket behind the latency proxy for warren-s3, nothing for the baselines."""
    if client == WARREN_S3:
        assert s3 is not None
        bucket = s3.create_bucket()
        try:
            yield s3.uri(bucket)
        finally:
            s3.remove_bucket(bucket)
    elif client.startswith(WARREN):
        path = tempfile.mkdtemp(prefix="warren-bench-archive-", dir=args.workdir)
        try:
            yield Path(path).as_uri()
        finally:
            shutil.rmtree(path, ignore_errors=True)
    else:
        yield None


def measure_queue(
    args: argparse.Namespace,
    broker: Broker,
    client: str,
    prefetch: int,
    n: int,
    bodies: list[bytes],
    s3: SlowS3 | None = None,
) -> Result:
    queue = broker.fresh(f"archive.{client}")
    try:
        with fresh_archive(args, client, s3) as sink:
            fill_s = broker.fill(queue, n, bodies)
            time.sleep(SETTLE_SECONDS)
            log(f"  filled {queue} with {n} messages in {fill_s:.1f}s ({n / fill_s:.0f} msgs/s); {client} drains it")
            r = spawn(args, client, queue, n, prefetch, sink=sink)
        left = broker.depth(queue)
        if left:
            log(f"  WARNING: {left} messages left in {queue} after the {client} run")
        result = Result.from_worker(client, prefetch, r)
        result.extra["left"] = left
        if client.startswith(WARREN) and result.extra.get("checkpoint_seq") != n:
            log(f"  WARNING: the archive's checkpoint says {result.extra.get('checkpoint_seq')}, expected {n}")
    finally:
        broker.delete(queue)
    return result


def measure_stream(args: argparse.Namespace, client: str, stream: str, n: int) -> Result:
    with fresh_archive(args, client, None) as sink:
        r = spawn(args, client, stream, n, None, sink=sink)
    result = Result.from_worker(client, None, r)
    if client != "rstream" and result.extra.get("checkpoint_seq") != n:
        log(f"  WARNING: the archive's checkpoint says {result.extra.get('checkpoint_seq')}, expected {n}")
    return result


def describe_warren(r: Result) -> str:
    e = r.extra
    appended = e.get("appended_s")
    at = f" prefetch {r.prefetch}" if r.prefetch else ""
    return (
        f"{r.client}{at}: consuming {e.get('start_s', 0):.2f}s after run_archiver was called; "
        + (f"all {r.messages} appended after {appended:.2f}s, " if appended is not None else "")
        + f"all committed after {r.seconds:.2f}s; orderly stop took {e.get('stop_s', 0):.2f}s; "
        f"{e.get('segments')} segments, {e.get('archive_bytes', 0) / 2**20:.1f} MiB"
        + (f"; {e['left']} messages left in the queue afterwards" if "left" in e else "")
    )


def print_table(title: str, results: list[Result]) -> None:
    header = f"{'client':<18} {'prefetch':>8} {'messages':>9} {'seconds':>8} {'msgs/s':>9} " + USAGE_HEADER
    print(title)
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.client:<18} {r.prefetch or '-':>8} {r.messages:>9} {r.seconds:>8.2f} {r.rate:>9.0f} "
            + usage_columns(r)
        )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def check(ours: Result, them: Result | None, factor: float, label: str, prefix: str = "target: ") -> str | None:
    if them is None:
        return None
    got = ours.rate / them.rate
    met = got > factor if label.startswith(">") and not label.startswith(">=") else got >= factor
    return (
        f"  {prefix}warren (prefetch {ours.prefetch}) {label.format(f'{them.client} (prefetch {them.prefetch})')}: "
        f"{got:.2f}x ({ours.rate:.0f} vs {them.rate:.0f} msgs/s)  {verdict(met)}"
    )


def print_queue_targets(results: list[Result], prefetches: list[int]) -> None:
    lines = []
    for prefetch in prefetches:
        at = [r for r in results if r.prefetch == prefetch and r.client != WARREN_S3]
        ours = next((r for r in at if r.client == WARREN), None)
        if ours is None:
            continue
        found = [line for fam, f, lab in TARGETS if (line := check(ours, fastest(at, fam), f, lab))]
        if found:
            lines += [f" at prefetch {prefetch} (every client at the same prefetch):", *found]
    warren_runs = [r for r in results if r.client == WARREN and r.prefetch in prefetches]
    others = [r for r in results if r.client != WARREN_S3]
    if len(prefetches) > 1 and warren_runs:
        ours = max(warren_runs, key=lambda r: r.rate)
        found = [line for fam, f, lab in TARGETS if (line := check(ours, fastest(others, fam), f, lab, ""))]
        if found:
            lines += [" warren's best prefetch against each client's best at any prefetch (for information):", *found]
    if lines:
        print("\ntargets (against the faster idiom of each client):")
        print("\n".join(lines))


def print_s3_target(results: list[Result], s3: SlowS3) -> None:
    remote = next((r for r in results if r.client == WARREN_S3), None)
    if remote is None:
        return
    local = next((r for r in results if r.client == WARREN and r.prefetch == remote.prefetch), None)
    if local is None:
        return
    got = remote.rate / local.rate
    print(
        f"\ntarget: warren into S3 with {1000 * s3.delay:g} ms per request (prefetch {remote.prefetch}) >= "
        f"{S3_TARGET:g}x warren into the local sink (prefetch {local.prefetch}): {got:.2f}x ({remote.rate:.0f} vs "
        f"{local.rate:.0f} msgs/s)  {verdict(got >= S3_TARGET)}"
    )


def run_all(args: argparse.Namespace, s3: SlowS3 | None) -> None:
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
    if s3 is not None and wanted(WARREN_S3, "s3"):
        if (WARREN, args.s3_prefetch) not in jobs:
            jobs.append((WARREN, args.s3_prefetch))  # what the S3 run is compared with
        jobs.append((WARREN_S3, args.s3_prefetch))
    n = args.messages
    workdir = args.workdir or tempfile.gettempdir()
    fs = filesystem_of(workdir)
    print(
        f"warren archive_throughput: {n} persistent messages of {args.size} bytes; queue runs: a fresh durable "
        f"classic queue each, prefetch {args.prefetch}, baselines multiple-ack every {ACK_EVERY}; warren: move, "
        f"ack-mode on-confirm, segment-max-age {SEGMENT_MAX_AGE:g}, local sink in {workdir} ({fs}); "
        f"best of {args.repeat}"
    )
    if s3 is not None:
        print(
            f"{WARREN_S3}: the same at prefetch {args.s3_prefetch} into S3: moto (in memory, one request at a time) "
            f"behind a loopback proxy holding every chunk a client sends for {1000 * s3.delay:g} ms"
        )
    print(
        f"RabbitMQ {broker.version()}, Python {platform.python_version()}, uvloop {uvloop.__version__}, "
        f"aio-pika {aio_pika.__version__}, pika {pika.__version__}, rstream {version_of(rstream)}, "
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
                r = measure_queue(args, broker, client, prefetch, n, bodies, s3)
                log(f"  -> {client} prefetch {prefetch}: {r.rate:.0f} msgs/s, CPU {100 * r.cpu / r.seconds:.0f}%")
                if client.startswith(WARREN):
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
            if r.client.startswith(WARREN):
                print("  " + describe_warren(r))
        print_queue_targets(best_queue, prefetches)
        if s3 is not None:
            print_s3_target(best_queue, s3)
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
                f"\ntarget: warren stream archiving >= {STREAM_TARGET:g}x a bare rstream counter: {got:.2f}x "
                f"({ours.rate:.0f} vs {bare.rate:.0f} msgs/s)  {verdict(got >= STREAM_TARGET)}"
            )
    if rss:
        measure_rss(args, broker, bodies, prefetches)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    if args.profile:
        profile_warren(args, broker, bodies, prefetches, stream)


def measure_rss(args: argparse.Namespace, broker: Broker, bodies: list[bytes], prefetches: list[int]) -> None:
    """warren's peak RSS archiving a queue backlog of --rss-messages, and a stream of as many from its first
    offset, each in a fresh worker process."""
    prefetch = args.rss_prefetch or max(prefetches)
    n = args.rss_messages
    log(f"RSS run: a backlog of {n} messages, warren at prefetch {prefetch}")
    runs = [("queue backlog", measure_queue(args, broker, WARREN, prefetch, n, bodies))]
    stream = broker.fresh("rss-stream", stream=True)
    try:
        fill_s = broker.fill(stream, n, bodies)
        time.sleep(SETTLE_SECONDS)
        log(f"RSS run: filled stream {stream} with {n} messages in {fill_s:.1f}s; warren-stream archives it")
        runs.append(("stream, from the first offset,", measure_stream(args, "warren-stream", stream, n)))
    finally:
        broker.delete(stream)
    print(
        f"\npeak RSS (VmHWM of the worker process) archiving {n} messages ({n * args.size / 2**20:.0f} MiB of "
        f"bodies), local sink:"
    )
    for what, r in runs:
        mb = r.peak_rss_kb / 1024
        at = f", prefetch {r.prefetch}" if r.prefetch else ""
        print(
            f"target: peak RSS < {RSS_TARGET_MB} MB, {what} of {n}{at}: {mb:.1f} MB "
            f"({r.rss_before_kb / 1024:.1f} MB before run_archiver; {r.rate:.0f} msgs/s)  "
            f"{verdict(mb < RSS_TARGET_MB)}"
        )
        print("  " + describe_warren(r))


def profile_warren(
    args: argparse.Namespace, broker: Broker, bodies: list[bytes], prefetches: list[int], stream: str | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, str, int | None]] = [(WARREN, "queue", p) for p in prefetches]
        if stream is not None:
            runs.append(("warren-stream", stream, None))
        for client, target, prefetch in runs:
            path = os.path.join(tmp, f"{client}-{prefetch}.prof")
            queue = target
            try:
                if client == WARREN:
                    queue = broker.fresh("profile")
                    broker.fill(queue, args.messages, bodies)
                    time.sleep(SETTLE_SECONDS)
                with fresh_archive(args, client, None) as sink:
                    out = spawn(args, client, queue, args.messages, prefetch, sink=sink, cprofile=path)
                r = Result.from_worker(client, prefetch, out)
            finally:
                if client == WARREN:
                    broker.delete(queue)
            what = f"{client} prefetch {prefetch}" if prefetch else client
            print(f"\ncProfile of {what} ({args.messages} messages, {r.rate:.0f} msgs/s under the profiler):")
            print_hotspots(path)
        if stream is not None:
            broker.delete(stream)


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
        "--only",
        help="comma-separated subset: client names (warren, aio-pika, ..., warren-s3, rstream), queue, s3, stream, rss",
    )
    p.add_argument("--no-s3", action="store_true", help="leave out the warren-s3 run (moto behind the latency proxy)")
    p.add_argument(
        "--s3-prefetch", type=int, default=S3_PREFETCH, help=f"prefetch of warren-s3 (default {S3_PREFETCH})"
    )
    p.add_argument(
        "--s3-latency-ms", type=float, default=1000 * slow_s3.DEFAULT_DELAY, help="added per request (default 20)"
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
    only = set(args.only.split(",")) if args.only else None
    s3_wanted = not args.no_s3 and (only is None or bool(only & {WARREN_S3, "s3"}))
    with tempfile.TemporaryDirectory(prefix="warren-bench-") as tmp, contextlib.ExitStack() as stack:
        s3 = None
        if s3_wanted:
            if (why := slow_s3.missing()) is not None:
                print(f"{WARREN_S3} skipped: {why}")
            else:
                s3 = stack.enter_context(slow_s3.slow_s3(Path(tmp), args.s3_latency_ms / 1000))
        if args.broker:
            if args.management_uri is None:
                from bridge.config import derived_uri

                args.management_uri = derived_uri(args.broker, "http", 15672, keep_vhost=False)
            run_all(args, s3)
            return
        node = stack.enter_context(private_node(Path(tmp)))
        args.broker = node.amqp_uri
        args.management_uri = node.management_uri
        args.stream_uri = args.stream_uri or node.stream_uri
        run_all(args, s3)


if __name__ == "__main__":
    main()
