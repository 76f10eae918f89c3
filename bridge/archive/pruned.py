"""Per-source retention mark: the archive was pruned through this sequence (`warren prune`, or the
archiver's `retention`), so its records now start after it by design, not by loss.

Written before the first segment it covers is removed: a prune that stops part-way leaves segments at
or below the mark, which readers still read and a rerun removes; recovery never takes the mark's
sequence again, and verify does not count what it covers as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.archive import layout
from bridge.archive.record import Source
from bridge.archive.small_object import encode_object, read_object
from sinks import Sink

# The shortest retention: a younger cut would race the writer's last uploads and compaction (whose hours
# are sealed 15 minutes after they end).
MIN_RETENTION_NS = 2 * 3600 * 1_000_000_000


@dataclass(frozen=True)
class PrunedMark:
    through_seq: int  # every record up to this sequence is removed, or about to be
    before_ns: int  # the retention cut: partitions that ended before it
    written_ns: int

    def encode(self) -> bytes:
        return encode_object(
            {"through_seq": self.through_seq, "before_ns": self.before_ns, "written_ns": self.written_ns}
        )

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> PrunedMark:
        return cls(int(m["through_seq"]), int(m["before_ns"]), int(m["written_ns"]))


async def read_pruned(sink: Sink, prefix: str, source: Source) -> PrunedMark | None:
    return await read_object(sink, layout.pruned_key(prefix, source), "retention mark", PrunedMark.from_map)


async def write_pruned(sink: Sink, prefix: str, source: Source, mark: PrunedMark) -> None:
    await sink.put(layout.pruned_key(prefix, source), mark.encode())
