"""Compaction: the objects one source's sealed hour takes before and after `compact`, and how fast a
replay reads that hour either way.

    .venv/bin/python bench/compaction.py [--records N] [--segment-records 25] [--size 256] [--repeat 3]
    .venv/bin/python bench/compaction.py --s3 [--s3-latency-ms 20]     # also on S3, 20 ms per request

No broker. One queue source's hour is written the way the archiver writes it when the broker waits
for its acknowledgements (small segments, each made durable quickly): `SegmentWriter` with
`RollPolicy(max_records=--segment-records, max_age=3600)`, N messages of --size random bytes
(delivery-mode 2), and a clock that places them evenly through the UTC hour that began three hours
ago, so the hour is sealed (compaction leaves an hour alone until 15 minutes after it ends). On the
local sink (a temporary directory, fsync'd files), and with --s3 also on S3: moto (the test suite's
emulator, in memory) behind bench/latency_proxy.py, which holds every chunk a client sends for
--s3-latency-ms before forwarding it.

Counted: the segment objects in that hour's partition (covered ones included), before and after
`bridge.archiver.compaction.compact(sink)` with its defaults (64 MiB segments at most).
Timed: `compact` itself, once; and a replay's read of the hour, --repeat times before compaction and
as many after, each keeping its best: `plan_sources` then `records_after` over the plan with the
hour as the window, which is what `warren replay --since/--until` reads (segments fetched 4 ahead),
without publishing. The records read are checked to be the same, in the same order, before and after
(outside the timing).

Targets printed, per sink: at most 4 objects per source per sealed hour after compaction; the
replay read of the compacted hour at least as fast as before. This prints figures; it asserts
nothing about timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import slow_s3  # first: through bench/common.py it puts the repository root on sys.path

from bridge.archive.layout import partition_start_ns
from bridge.archive.reader import TimeRange
from bridge.archive.record import Source, SourceKind
from bridge.archiver.compaction import all_segment_keys, compact
from bridge.archiver.writer import RollPolicy, SegmentWriter
from bridge.replay.selection import plan_sources, records_after
from protocol.core.message import Message, encode_properties
from protocol.loop import run
from sinks import LocalSink, Sink, open_sink

HOUR_NS = 3600 * 1_000_000_000
SOURCE = Source("/", SourceKind.QUEUE, "bench.compaction")
OBJECTS_TARGET = 4  # per source per sealed hour, after compaction


@dataclass
class Outcome:
    sink: str
    before: int  # objects in the hour's partition
    after: int
    write_s: float
    compact_s: float
    read_before: float  # best records/s
    read_after: float
    records: int


class Clock:
    """N capture times spread evenly through one hour, in order."""

    def __init__(self, hour_ns: int, n: int) -> None:
        self.hour_ns, self.step, self.i = hour_ns, (HOUR_NS - 1) // max(1, n), 0

    def __call__(self) -> int:
        at = self.hour_ns + min(self.i * self.step, HOUR_NS - 1)
        self.i += 1
        return at


async def write_hour(sink: Sink, hour_ns: int, n: int, size: int, segment_records: int) -> float:
    """One source's hour of archive in segments of `segment_records`; returns the seconds it took."""
    rng = random.Random(0)
    raw = encode_properties({"delivery_mode": 2})
    messages = [Message(rng.randbytes(size), raw, exchange="", routing_key=SOURCE.name) for _ in range(n)]
    policy = RollPolicy(max_records=segment_records, max_age=3600)
    writer = SegmentWriter(sink, SOURCE, policy=policy, clock=Clock(hour_ns, n))
    t0 = time.perf_counter()
    await writer.start()
    for message in messages:
        writer.append_message(message)
        if not writer.has_room:
            await writer.wait_for_room()
    await writer.close()
    return time.perf_counter() - t0


async def hour_objects(sink: Sink, hour_ns: int) -> int:
    """Segment objects in the source's partition of that hour, covered ones included."""
    return sum(1 for seg in await all_segment_keys(sink, "", [SOURCE]) if seg.hour_ns == hour_ns)


async def read_hour(sink: Sink, window: TimeRange) -> tuple[int, float]:
    """A replay's read of the window: plan, then every record of it in order. (records, seconds)"""
    t0 = time.perf_counter()
    records = 0
    for plan in await plan_sources(sink, [], window):
        async for _segment, _record in records_after(sink, plan, window, 0, skip_corrupt=False):
            records += 1
    return records, time.perf_counter() - t0


async def digest_hour(sink: Sink, window: TimeRange) -> str:
    """What the replay reads, as one hash of every record's sequence, properties and body, in order."""
    h = hashlib.sha256()
    for plan in await plan_sources(sink, [], window):
        async for _segment, record in records_after(sink, plan, window, 0, skip_corrupt=False):
            h.update(record.seq.to_bytes(8, "big"))
            h.update(record.raw_properties)
            h.update(record.body)
    return h.hexdigest()


async def best_read(sink: Sink, window: TimeRange, n: int, repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        records, seconds = await read_hour(sink, window)
        if records != n:
            raise RuntimeError(f"the replay read {records} records of the hour, expected {n}")
        rates.append(records / seconds)
    return max(rates)


async def measure(name: str, sink: Sink, args: argparse.Namespace, hour_ns: int) -> Outcome:
    window = TimeRange(hour_ns, hour_ns + HOUR_NS - 1)
    n = args.records
    try:
        await sink.check()
        write_s = await write_hour(sink, hour_ns, n, args.size, args.segment_records)
        before = await hour_objects(sink, hour_ns)
        log(f"{name}: wrote {n} records in {before} segments in {write_s:.1f}s; reading the hour back")
        digest = await digest_hour(sink, window)
        read_before = await best_read(sink, window, n, args.repeat)
        t0 = time.perf_counter()
        report = await compact(sink)
        compact_s = time.perf_counter() - t0
        log(f"{name}: {report.line()} in {compact_s:.1f}s")
        after = await hour_objects(sink, hour_ns)
        if await digest_hour(sink, window) != digest:
            raise RuntimeError(f"{name}: the compacted hour does not read back as the same records")
        read_after = await best_read(sink, window, n, args.repeat)
    finally:
        await sink.close()
    return Outcome(name, before, after, write_s, compact_s, read_before, read_after, n)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def print_results(outcomes: list[Outcome], args: argparse.Namespace, hour_ns: int) -> None:
    hour = dt.datetime.fromtimestamp(hour_ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:00 UTC")
    print(
        f"warren compaction: one queue source's hour ({hour}, sealed), {args.records} records of {args.size} "
        f"random bytes in segments of {args.segment_records} records; replay read best of {args.repeat}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}\n"
    )
    header = (
        f"{'sink':<24} {'objects before':>14} {'after':>6} {'write s':>8} {'compact s':>9} "
        f"{'read before rec/s':>17} {'read after rec/s':>16} {'after/before':>12}"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        print(
            f"{o.sink:<24} {o.before:>14} {o.after:>6} {o.write_s:>8.2f} {o.compact_s:>9.2f} "
            f"{o.read_before:>17.0f} {o.read_after:>16.0f} {o.read_after / o.read_before:>11.2f}x"
        )
    print()
    for o in outcomes:
        met = o.after <= OBJECTS_TARGET
        print(
            f"target: objects per source-hour ({o.sink}): before {o.before}, after {o.after} "
            f"(target <= {OBJECTS_TARGET})  {'met' if met else 'MISSED'}"
        )
        got = o.read_after / o.read_before
        print(
            f"target: replay of the compacted hour at least as fast as before ({o.sink}): {o.read_after:.0f} vs "
            f"{o.read_before:.0f} records/s, {got:.2f}x  {'met' if got >= 1.0 else 'MISSED'}"
        )
    print(
        "\nread: plan_sources and records_after over the hour (what warren replay reads, segments fetched 4\n"
        "ahead), without publishing; write: SegmentWriter from start to close, every segment durable."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=50_000, help="records in the hour (default 50000)")
    p.add_argument("--segment-records", type=int, default=25, help="records per segment as written (default 25)")
    p.add_argument("--size", type=int, default=256, help="body size in bytes (default 256)")
    p.add_argument("--repeat", type=int, default=3, help="replay reads before and after; each keeps its best")
    p.add_argument("--s3", action="store_true", help="also on S3: moto behind the latency proxy")
    p.add_argument(
        "--s3-latency-ms", type=float, default=1000 * slow_s3.DEFAULT_DELAY, help="added per request (default 20)"
    )
    p.add_argument("--workdir", help="where the local archive goes (default: the system's temporary directory)")
    args = p.parse_args()
    if args.records < 1 or args.segment_records < 1 or args.repeat < 1:
        p.error("--records, --segment-records and --repeat must be at least 1")
    hour_ns = partition_start_ns(time.time_ns()) - 3 * HOUR_NS
    outcomes: list[Outcome] = []
    with (
        tempfile.TemporaryDirectory(prefix="warren-bench-compaction-", dir=args.workdir) as tmp,
        contextlib.ExitStack() as stack,
    ):
        outcomes.append(run(measure("local", LocalSink(Path(tmp) / "archive"), args, hour_ns)))
        if args.s3:
            if (why := slow_s3.missing()) is not None:
                print(f"s3 skipped: {why}")
            else:
                s3 = stack.enter_context(slow_s3.slow_s3(Path(tmp), args.s3_latency_ms / 1000))
                bucket = s3.create_bucket()
                try:
                    name = f"s3, {1000 * s3.delay:g} ms per request"
                    outcomes.append(run(measure(name, open_sink(s3.uri(bucket)), args, hour_ns)))
                finally:
                    s3.remove_bucket(bucket)
    print_results(outcomes, args, hour_ns)


if __name__ == "__main__":
    main()
