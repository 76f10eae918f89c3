"""Snapshots in the archive: which snapshot runs of a queue completed.

A snapshot copies what a queue holds without taking it, so the same messages are archived again by
every snapshot; its records carry the run's id (its start time, ns), and a run that read the whole
queue leaves one small object behind:

    <prefix>/<vhost>/queue/<name>/_snapshots/<id, 20 digits>     msgpack {format, id, first_seq, last_seq,
                                                                 records, last_captured_ns}

Replay restores a queue as one snapshot saw it: the latest complete one at or before the time asked
for (docs/FORMAT.md, "Snapshots"); a run that stopped half-way is never chosen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from bridge.archive import layout
from bridge.archive.record import Source
from bridge.errors import ArchiveCorrupt
from sinks import Sink

SNAPSHOTS = "_snapshots"
FORMAT = 1


@dataclass(frozen=True)
class SnapshotRun:
    id: int
    first_seq: int
    last_seq: int
    records: int
    last_captured_ns: int


def snapshot_key(prefix: str, source: Source, snapshot_id: int) -> str:
    return layout.source_prefix(prefix, source) + f"{SNAPSHOTS}/{snapshot_id:020d}"


async def record_snapshot(sink: Sink, prefix: str, source: Source, run: SnapshotRun) -> None:
    """Mark a snapshot complete, once every one of its records is durable."""
    await sink.put(snapshot_key(prefix, source, run.id), msgpack.packb({"format": FORMAT, **asdict(run)}))


async def completed_snapshots(sink: Sink, prefix: str, source: Source) -> list[SnapshotRun]:
    """The source's complete snapshot runs, oldest first."""
    runs = []
    async for info in sink.list(layout.source_prefix(prefix, source) + SNAPSHOTS + "/"):
        data = await sink.get(info.key)
        try:
            m: dict[str, Any] = msgpack.unpackb(data, raw=False)
            if m.pop("format") != FORMAT:
                raise ValueError("unsupported format")
            runs.append(SnapshotRun(**m))
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as err:
            raise ArchiveCorrupt(f"snapshot record is unreadable: {err}", segment=info.key) from err
    return sorted(runs, key=lambda run: run.id)


def chosen_snapshot(runs: list[SnapshotRun], since_ns: int | None, until_ns: int | None) -> SnapshotRun | None:
    """The snapshot a replay of [since, until] restores: the latest complete by `until`, begun at or after
    `since`."""
    fitting = [
        run
        for run in runs
        if (until_ns is None or run.last_captured_ns <= until_ns) and (since_ns is None or run.id >= since_ns)
    ]
    return fitting[-1] if fitting else None
