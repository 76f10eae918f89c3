"""`warren sync SRC DST` run as an operator runs it, in subprocesses, on archives written by the segment writer:
it copies what the destination lacks (and only that), restores checkpoints after the segments they cover,
reports conflicting objects without touching them, and never rolls a checkpoint back. No broker is needed."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.archive import layout
from bridge.archive.checkpoint import Checkpoint, read_checkpoint
from bridge.archive.definitions import encode_definitions
from bridge.archive.reader import list_segments
from bridge.archive.record import Source, SourceKind
from bridge.archiver.writer import RollPolicy, SegmentWriter
from protocol.core.message import Message
from protocol.loop import run
from sinks import LocalSink

REPO = Path(__file__).resolve().parents[2]
S = 1_000_000_000
T0 = int(dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC).timestamp()) * S
ORDERS = Source("/", SourceKind.QUEUE, "orders")
EVENTS = Source("prod", SourceKind.STREAM, "events")
REPORT = re.compile(r"^copied (\d+) objects \((\d+) bytes\) and (\d+) checkpoints; (\d+) already present$")


class Clock:
    def __init__(self) -> None:
        self.now_ns = T0

    def __call__(self) -> int:
        return self.now_ns


def definitions(n: int) -> dict:
    return {
        "rabbit_version": "3.13.0",
        "queues": [{"name": "orders", "vhost": "/", "durable": True, "arguments": {}}],
        "exchanges": [{"name": f"shop-{n}", "vhost": "/", "type": "topic", "durable": True}],
    }


async def write_archive(root: Path) -> None:
    """Orders: three segments (1-10, 11-20, 21-30); events: two segments (1-3, 4-6); two definitions."""
    sink = LocalSink(root)
    await sink.check()
    clock = Clock()
    policy = RollPolicy(max_age=3600)
    orders = SegmentWriter(sink, ORDERS, policy=policy, clock=clock, retry_base=0.01, retry_max=0.01)
    await orders.start()
    for n in range(1, 31):
        clock.now_ns = T0 + n * 60 * S
        orders.append_message(Message.build(f"order {n}".encode(), {"message_id": f"order-{n}"}, routing_key="o"))
        if n % 10 == 0:
            await orders.flush()
    await orders.close()
    events = SegmentWriter(sink, EVENTS, policy=policy, clock=clock, retry_base=0.01, retry_max=0.01)
    await events.start()
    for k in range(1, 7):
        clock.now_ns = T0 + 2 * 3600 * S + k * S
        events.append_stream(b"\x00Sw\xa1\x05event" + bytes([k]), 100 + k, (clock.now_ns - S // 2) // 1_000_000)
        if k == 3:
            await events.flush()
    await events.close()
    for n in range(2):
        await sink.put(layout.definitions_key("", T0 + n * 3600 * S), encode_definitions(definitions(n)))


@dataclass(frozen=True)
class Archive:
    root: Path
    segments: dict[Source, list[str]]  # keys in sequence order
    checkpoints: dict[Source, str]
    definitions: list[str]

    def objects(self) -> dict[str, bytes]:
        return files(self.root)


def files(root: Path) -> dict[str, bytes]:
    """Every object under `root`, by key."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    root = tmp_path_factory.mktemp("src") / "archive"
    run(write_archive(root))
    segments: dict[Source, list[str]] = {}
    for seg in run(list_segments(LocalSink(root))):
        segments.setdefault(seg.source, []).append(seg.key)
    assert {s: len(keys) for s, keys in segments.items()} == {ORDERS: 3, EVENTS: 2}
    archive = Archive(
        root,
        segments,
        {s: layout.checkpoint_key("", s) for s in (ORDERS, EVENTS)},
        sorted(k for k in files(root) if k.startswith(layout.DEFINITIONS + "/")),
    )
    assert len(archive.definitions) == 2
    assert set(archive.objects()) == {
        *archive.segments[ORDERS],
        *archive.segments[EVENTS],
        *archive.checkpoints.values(),
        *archive.definitions,
    }
    return archive


def warren(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *map(str, args)],
        cwd=REPO,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
    )


def sync(src_root: Path, dst_root: Path, expected_exit: int = 0) -> list[str]:
    result = warren("sync", src_root, dst_root)
    assert result.returncode == expected_exit, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout.splitlines()


def counts(line: str) -> tuple[int, int, int, int]:
    """(objects copied, bytes copied, checkpoints copied, already present) from sync's report line."""
    match = REPORT.match(line)
    assert match, line
    copied, size, checkpoints, present = map(int, match.groups())
    return copied, size, checkpoints, present


def verify_ok(root: Path) -> None:
    result = warren("verify", root)
    assert result.returncode == 0, (result.stdout, result.stderr)


def ls_json(root: Path) -> list[dict]:
    result = warren("ls", "--json", root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def immutable_bytes(archive: Archive) -> int:
    return sum(len(data) for key, data in archive.objects().items() if key not in archive.checkpoints.values())


# ---- tests ------------------------------------------------------------------------------------


def test_sync_into_an_empty_destination_copies_the_whole_archive(src, tmp_path):
    dst = tmp_path / "dst" / "archive"
    (line,) = sync(src.root, dst)
    assert counts(line) == (7, immutable_bytes(src), 2, 0)
    assert files(dst) == src.objects()  # probe objects of the start-up check included: none are left
    verify_ok(dst)
    listed = ls_json(dst)
    assert listed == ls_json(src.root)
    assert {(entry["source"], entry["segments"]) for entry in listed} == {("orders", 3), ("events", 2)}


def test_sync_restores_a_missing_middle_segment_and_checkpoint_and_copies_nothing_else(src, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(src.root, dst)
    middle = src.segments[ORDERS][1]
    (dst / middle).unlink()
    (dst / src.checkpoints[ORDERS]).unlink()
    untouched = {key: (dst / key).stat().st_mtime_ns for key in files(dst)}

    (line,) = sync(src.root, dst)

    assert counts(line) == (1, len(src.objects()[middle]), 1, 6)
    assert files(dst) == src.objects()
    assert {key: (dst / key).stat().st_mtime_ns for key in untouched} == untouched
    verify_ok(dst)
    (line,) = sync(src.root, dst)
    assert counts(line) == (0, 0, 0, 7)


def test_a_conflicting_object_is_reported_left_untouched_and_fails_the_sync(src, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(src.root, dst)
    conflicting = src.segments[EVENTS][0]
    impostor = b"not the segment that the source archive holds"
    (dst / conflicting).write_bytes(impostor)
    missing = src.definitions[1]
    (dst / missing).unlink()
    src_size = len(src.objects()[conflicting])

    report = sync(src.root, dst, expected_exit=1)

    assert counts(report[0]) == (1, len(src.objects()[missing]), 0, 5)
    assert report[1:] == [
        f"CONFLICT {conflicting}: {src_size} bytes in {src.root.as_uri()}, {len(impostor)} in {dst.as_uri()}"
    ]
    assert (dst / conflicting).read_bytes() == impostor
    assert (dst / missing).read_bytes() == src.objects()[missing]


def test_a_destination_checkpoint_ahead_of_the_source_is_not_rolled_back(src, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(src.root, dst)

    async def archive_further() -> None:
        # The destination went on archiving orders after the copy: its checkpoint is ahead of the source's.
        sink = LocalSink(dst)
        clock = Clock()
        clock.now_ns = T0 + 40 * 60 * S
        writer = SegmentWriter(
            sink, ORDERS, policy=RollPolicy(max_age=3600), clock=clock, retry_base=0.01, retry_max=0.01
        )
        await writer.start()
        for n in range(31, 36):
            writer.append_message(Message.build(f"order {n}".encode(), {"message_id": f"order-{n}"}))
        await writer.close()

    run(archive_further())
    ahead = (dst / src.checkpoints[ORDERS]).read_bytes()
    assert Checkpoint.decode(ahead, "dst").last_seq == 35

    (line,) = sync(src.root, dst)

    assert counts(line) == (0, 0, 0, 7)
    assert (dst / src.checkpoints[ORDERS]).read_bytes() == ahead
    verify_ok(dst)


def test_a_destination_checkpoint_behind_the_source_is_brought_forward(src, tmp_path):
    dst = tmp_path / "dst"
    shutil.copytree(src.root, dst)
    last = src.segments[ORDERS][-1]
    (dst / last).unlink()
    behind = Checkpoint(20, None, src.segments[ORDERS][1], T0 + 20 * 60 * S, T0 + 21 * 60 * S)
    (dst / src.checkpoints[ORDERS]).write_bytes(behind.encode())

    (line,) = sync(src.root, dst)

    assert counts(line) == (1, len(src.objects()[last]), 1, 6)
    checkpoint = run(read_checkpoint(LocalSink(dst), "", ORDERS))
    assert checkpoint == Checkpoint.decode(src.objects()[src.checkpoints[ORDERS]], "src")
    assert checkpoint is not None and checkpoint.last_seq == 30
    verify_ok(dst)
