"""Where the archive of one source ends, found when a writer starts after whatever stopped the last one.

The checkpoint may lag the segments (a crash between the two), so the end is found by looking past it,
up to the first gap. A segment after a gap was uploaded alongside one that never completed: segments
are made known (and their messages acknowledged) only in order, so the broker still holds its
messages and delivers them again. Keeping it would leave a gap in the sequence, so it is removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bridge.archive.checkpoint import read_checkpoint
from bridge.archive.pruned import read_pruned
from bridge.archive.reader import list_segments, read_index
from bridge.archive.record import Source
from sinks import Sink

log = logging.getLogger("warren.archive")


@dataclass(frozen=True)
class ArchiveEnd:
    last_seq: int  # 0: nothing archived yet
    last_offset: int | None  # the last stream offset archived, if any
    recent: list[str]  # keys of the newest segments, in sequence order (at most `keep`)


async def find_archive_end(sink: Sink, prefix: str, source: Source, *, keep: int) -> ArchiveEnd:
    checkpoint = await read_checkpoint(sink, prefix, source)
    last_seq = checkpoint.last_seq if checkpoint else 0
    last_offset = checkpoint.last_offset if checkpoint else None
    pruned = await read_pruned(sink, prefix, source)
    if pruned is not None and pruned.through_seq > last_seq:
        last_seq = pruned.through_seq  # retention removed through here: never numbered again, no gap after it
    kept: list[str] = []
    for seg in await list_segments(sink, prefix, source):
        if seg.first_seq <= last_seq:
            kept.append(seg.key)
            continue
        if seg.first_seq > last_seq + 1:
            log.warning("removing a segment uploaded after one that never completed", extra={"key": seg.key})
            await sink.delete(seg.key)
            continue
        index = await read_index(sink, seg)
        last_seq = index.last_seq
        if index.last_offset is not None:
            last_offset = index.last_offset
        kept.append(seg.key)
    return ArchiveEnd(last_seq, last_offset, kept[-keep:])
