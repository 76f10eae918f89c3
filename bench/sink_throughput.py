"""Archive throughput per sink: local disk, S3 (moto), GCS (gcp-storage-emulator), Azure Blob (Azurite), mirrored.

    .venv/bin/python bench/sink_throughput.py [--records N] [--body random|json] [--repeat R] [--only NAME,...]

Each run archives the same N messages (256-byte bodies; content_type, delivery_mode 2, a message_id
and a timestamp) through warren's own `SegmentWriter` with `RollPolicy(max_bytes=8 MiB)`, as the
archiver does: records appended on the event loop, segments rolled at 8 MiB and uploaded in order by
the writer's upload task, each followed by the source's checkpoint. The clock runs from the first
append until `close()` returns, that is until the last segment is durable. The messages are made
beforehand, outside the clock, and the archive is read back afterwards (outside the clock too) to
check that it holds every record.

Sinks, in one run of this script: `local` (a temporary directory), `s3`, `gs` and `az` on the three
storage emulators, which this script starts on free loopback ports with the test suite's fixture
classes and stops at the end, and `mirror`: local + s3 + az with write-quorum 2 (a segment counts as
durable once two of them hold it; the third is finished in the background). Rounds go over the sinks
round-robin, each starting one further on, and each sink's best round counts.

The emulators are not the services: they run on this machine, without network latency, bandwidth
limits or the services' own durability work, and some are slow in ways the services are not (moto
checks each upload's CRC32 in Python, one request at a time). The figures say what warren and the
SDKs cost per segment and how the backends compare on this host, not what S3, GCS or Azure would
sustain. Columns: records/s and segments/s over the wall time; MB/s is segment bytes stored per second
(10^6 bytes, compressed, as they cross to the sink); `in put` is the share of the wall time spent
inside the sink's put (segments and checkpoints; uploads overlap with encoding and compression, so
a share near 100% means the sink is the bottleneck), and `ms/segment put` the mean time one segment's
upload takes (for the mirror: until the quorum holds it). This prints figures; it asserts nothing
about timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import rotate  # first: it puts the repository root on sys.path

from bridge.archive.reader import list_segments, read_index
from bridge.archive.record import Source, SourceKind
from bridge.archiver.writer import Durable, RollPolicy, SegmentWriter
from protocol.core.message import Message, encode_properties
from protocol.loop import run
from sinks import LocalSink, ObjectInfo, Sink, open_sink
from sinks.mirror import MirroredSink

BODY_SIZE = 256
SEGMENT_MAX = 8 * 1024 * 1024
YIELD_EVERY = 100  # records appended between two turns of the event loop (the archiver yields per read)
SOURCE = Source("/", SourceKind.QUEUE, "orders")
SINKS = ("local", "s3", "gs", "az", "mirror")
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")
AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


# ---- the messages ------------------------------------------------------------------------------


def make_messages(n: int, body_kind: str) -> list[Message]:
    """N messages with 256-byte bodies: random bytes (incompressible: segments as large as the records),
    or JSON order events (compressible, as much real traffic is)."""
    rng = random.Random(42)
    messages = []
    for i in range(n):
        if body_kind == "random":
            body = rng.randbytes(BODY_SIZE)
        else:
            head = json.dumps({"order": f"o-{i:010d}", "amount": round(rng.uniform(1, 500), 2), "note": ""})
            note = " ".join(rng.choice(WORDS) for _ in range(40))[: BODY_SIZE - len(head)]
            body = head.replace('"note": ""', f'"note": "{note}"').encode()
        properties = {
            "content_type": "application/json",
            "delivery_mode": 2,
            "message_id": f"msg-{i:010d}",
            "timestamp": dt.datetime.fromtimestamp(1_700_000_000 + i // 1000, dt.UTC),
        }
        messages.append(Message(body, encode_properties(properties), exchange="orders", routing_key="order.created"))
    return messages


# ---- a sink that counts the time spent in put ----------------------------------------------------


class TimedSink(Sink):
    """Delegates to `inner`, adding up the wall time its puts take (all, and those of segments)."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.put_seconds = 0.0
        self.segment_put_seconds = 0.0

    @property
    def url(self) -> str:
        return self.inner.url

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        started = time.perf_counter()
        try:
            await self.inner.put(key, data, if_absent=if_absent)
        finally:
            took = time.perf_counter() - started
            self.put_seconds += took
            if key.endswith(".wseg"):
                self.segment_put_seconds += took

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await self.inner.get_range(key, start, length)

    async def head(self, key: str) -> ObjectInfo | None:
        return await self.inner.head(key)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.list(prefix):
            yield info

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()


# ---- one run -------------------------------------------------------------------------------------


@dataclass
class Result:
    sink: str
    records: int
    segments: int
    stored: int
    seconds: float
    put_seconds: float
    segment_put_seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.stored / 1e6 / self.seconds

    @property
    def segments_per_s(self) -> float:
        return self.segments / self.seconds


async def archive(name: str, make_sink: Callable[[], Sink], messages: list[Message]) -> Result:
    """Archive `messages` through a SegmentWriter onto a fresh sink; time from first append to durable."""
    sink = TimedSink(make_sink())
    durable: list[Durable] = []
    stored = 0
    try:
        await sink.check()
        writer = SegmentWriter(sink, SOURCE, policy=RollPolicy(max_bytes=SEGMENT_MAX), on_durable=durable.append)
        await writer.start()
        sink.put_seconds = sink.segment_put_seconds = 0.0
        started = time.perf_counter()
        for i, message in enumerate(messages, 1):
            writer.append_message(message)
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
                if not writer.has_room:
                    await writer.wait_for_room()
        await writer.close()
        seconds = time.perf_counter() - started
        put_seconds, segment_put_seconds = sink.put_seconds, sink.segment_put_seconds
        # Outside the clock: the archive holds every record, in segments of the expected sizes.
        segments = await list_segments(sink, source=SOURCE)
        indexes = [await read_index(sink, seg) for seg in segments]
        archived = sum(index.records for index in indexes)
        stored = sum(index.size for index in indexes)
        if archived != len(messages) or len(segments) != len(durable):
            raise RuntimeError(f"{name}: {archived} records in {len(segments)} segments, {len(durable)} made durable")
    finally:
        await sink.close()
    return Result(name, len(messages), len(durable), stored, seconds, put_seconds, segment_put_seconds)


def opener(uri: str) -> Callable[[], Sink]:
    return lambda: open_sink(uri)


def mirror(*members: Callable[[], Sink]) -> Callable[[], Sink]:
    return lambda: MirroredSink([open_member() for open_member in members], write_quorum=2)


# ---- the emulators ---------------------------------------------------------------------------------


@dataclass
class Backends:
    """Per sink name, a function that makes a new, empty bucket, container or directory (outside any event
    loop) and returns what opens a sink on it (inside the run's loop)."""

    factories: dict[str, Callable[[], Callable[[], Sink]]]
    missing: dict[str, str]


@contextlib.contextmanager
def backends(workdir: Path, wanted: set[str]) -> Iterator[Backends]:
    """Start the emulators the wanted sinks need (moto, gcp-storage-emulator, Azurite; in memory)."""
    from bridge.harness.nodes import free_port
    from tests.sinks.emulators_azure import PROJECT_AZURITE, Azurite
    from tests.sinks.emulators_gcs import GCSEmulator, _emulator_executable
    from tests.sinks.emulators_s3 import MotoServer

    os.environ.update(AWS)
    os.environ.update(
        AWS_CONFIG_FILE=str(workdir / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
    )
    for name in (
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "STORAGE_EMULATOR_HOST",
    ):
        os.environ.pop(name, None)
    factories: dict[str, Callable[[], Callable[[], Sink]]] = {}
    missing: dict[str, str] = {}
    running: list[Any] = []
    counter = iter(range(1_000_000))

    def local() -> Callable[[], Sink]:
        path = workdir / f"local-{next(counter)}"
        return lambda: LocalSink(path)

    factories["local"] = local
    try:
        if wanted & {"s3", "mirror"}:
            moto = MotoServer(workdir).start()
            running.append(moto)
            factories["s3"] = lambda: opener(f"s3://{moto.create_bucket()}/bench?endpoint-url={moto.endpoint}")
        if "gs" in wanted:
            executable = _emulator_executable()
            if executable is None:
                missing["gs"] = "gcp-storage-emulator is not installed"
            else:
                gcs = GCSEmulator(executable, free_port(), workdir / "gcs.log")
                gcs.start()
                running.append(gcs)
                factories["gs"] = lambda: opener(f"gs://{gcs.create_bucket()}/bench?endpoint={gcs.endpoint}")
        if wanted & {"az", "mirror"}:
            binary = str(PROJECT_AZURITE) if PROJECT_AZURITE.is_file() else shutil.which("azurite-blob")
            if binary is None:
                missing["az"] = "azurite-blob is not installed (make setup)"
            else:
                (workdir / "azurite").mkdir()
                azurite = Azurite(binary, workdir / "azurite").start()
                running.append(azurite)
                os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
                factories["az"] = lambda: opener(f"az://{azurite.create_container()}/bench")
        if "s3" in factories and "az" in factories:
            factories["mirror"] = lambda: mirror(local(), factories["s3"](), factories["az"]())
        else:
            missing["mirror"] = "needs both s3 and az"
        yield Backends(factories, missing)
    finally:
        for emulator in reversed(running):
            emulator.stop()


# ---- running -------------------------------------------------------------------------------------


def print_table(n: int, body_kind: str, results: list[Result], missing: dict[str, str]) -> None:
    mean_segment = sum(r.stored for r in results) / max(1, sum(r.segments for r in results)) / 1e6
    print(
        f"{n:,} records, {BODY_SIZE}-byte {body_kind} bodies, segments rolled at 8 MiB "
        f"(~{mean_segment:.1f} MB each as stored); python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print()
    header = f"| {'sink':<8} | {'records/s':>10} | {'MB/s':>7} | {'segments/s':>10} | {'segments':>8} | "
    print(header + f"{'stored MB':>9} | {'wall s':>7} | {'in put':>6} | {'ms/segment put':>14} |")
    print("| -------- | ---------: | ------: | ---------: | -------: | --------: | ------: | -----: | -------------: |")
    for r in results:
        print(
            f"| {r.sink:<8} | {r.records_per_s:>10,.0f} | {r.mb_per_s:>7.1f} | {r.segments_per_s:>10.2f} | "
            f"{r.segments:>8} | {r.stored / 1e6:>9.1f} | {r.seconds:>7.2f} | {r.put_seconds / r.seconds:>6.0%} | "
            f"{r.segment_put_seconds / r.segments * 1000:>14.0f} |"
        )
    for name, why in missing.items():
        print(f"| {name:<8} | skipped: {why}")
    print()
    print("s3 = moto, gs = gcp-storage-emulator, az = Azurite, all in memory on loopback; mirror = local + s3 + az,")
    print("write-quorum 2. Emulators are not the real services: the figures show warren's and the SDKs' overhead")
    print("per segment on this host, not cloud latency or bandwidth.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--body", choices=("random", "json"), default="random")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over the sinks; each sink's best run counts")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SINKS)}")
    args = parser.parse_args()
    if args.records < 1 or args.repeat < 1:
        parser.error("--records and --repeat must be at least 1")
    wanted = set(args.only.split(",")) if args.only else set(SINKS)
    if not wanted <= set(SINKS):
        parser.error(f"--only takes names from {', '.join(SINKS)}")
    messages = make_messages(args.records, args.body)
    with tempfile.TemporaryDirectory(prefix="warren-bench-sinks-") as tmp, backends(Path(tmp), wanted) as found:
        names = [s for s in SINKS if s in wanted and s in found.factories]
        runs: dict[str, list[Result]] = {name: [] for name in names}
        for round_ in range(args.repeat):  # round-robin, each round starting one further on
            for name in rotate(names, round_):
                result = run(archive(name, found.factories[name](), messages))
                print(f"round {round_ + 1}: {name}: {result.records_per_s:,.0f} records/s", file=sys.stderr)
                runs[name].append(result)
        results = [min(runs[name], key=lambda r: r.seconds) for name in names]
        missing = {name: why for name, why in found.missing.items() if name in wanted}
    print_table(args.records, args.body, results, missing)


if __name__ == "__main__":
    main()
