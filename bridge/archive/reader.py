"""Reading an archive on any sink: its sources, their segments, the segments' indexes and records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from bridge.archive import layout
from bridge.archive.layout import SegmentKey
from bridge.archive.record import Record, Source
from bridge.archive.segment import (
    HEADER_FIXED,
    TRAILER_SIZE,
    SegmentIndex,
    footer_length,
    iter_records,
    parse_index,
)
from bridge.errors import ArchiveCorrupt
from sinks import Sink

TAIL_GUESS = 64 * 1024  # one read usually brings the trailer and the whole footer
HOUR_NS = 3600 * 1_000_000_000
# A stream record's time is the broker's clock, its partition the archiver's: allow for skew between them.
CLOCK_SKEW_NS = 300 * 1_000_000_000


async def list_segments(sink: Sink, prefix: str = "", source: Source | None = None) -> list[SegmentKey]:
    """Segment keys, grouped by source and in sequence order within each."""
    scope = layout.source_prefix(prefix, source) if source else layout.join(prefix)
    found = [seg async for info in sink.list(scope) if (seg := layout.parse_segment_key(prefix, info.key))]
    found.sort(key=lambda s: (s.source, s.first_seq))
    return found


async def read_index(sink: Sink, segment: SegmentKey) -> SegmentIndex:
    """A segment's footer index, with one or two range reads and no decompression."""
    info = await sink.head(segment.key)
    if info is None:
        raise ArchiveCorrupt("segment vanished while being read", segment=segment.key)
    size = info.size
    if size < HEADER_FIXED + TRAILER_SIZE:
        raise ArchiveCorrupt(f"too short for a segment ({size} bytes)", segment=segment.key, offset=0)
    tail = await sink.get_range(segment.key, -min(TAIL_GUESS, size), min(TAIL_GUESS, size))
    length, crc = footer_length(tail, segment.key, size)
    if length + TRAILER_SIZE > len(tail):
        tail = await sink.get_range(segment.key, -(length + TRAILER_SIZE), length + TRAILER_SIZE)
    footer = tail[len(tail) - TRAILER_SIZE - length : len(tail) - TRAILER_SIZE]
    index = parse_index(segment.source, footer, crc, segment.key, size)
    if index.first_seq != segment.first_seq:
        raise ArchiveCorrupt(
            f"footer starts at sequence {index.first_seq} but the name says {segment.first_seq}", segment=segment.key
        )
    return index


@dataclass(frozen=True)
class TimeRange:
    """A closed interval of record times in UTC nanoseconds; None leaves that side open."""

    since_ns: int | None = None
    until_ns: int | None = None

    def may_hold(self, seg: SegmentKey) -> bool:
        # Partitions are by capture time, and a record's time is not after its capture time (a stream
        # chunk is stored before we read it; up to clock skew), so only `since` can prune by partition.
        return self.since_ns is None or seg.hour_ns + HOUR_NS + CLOCK_SKEW_NS > self.since_ns

    def overlaps(self, index: SegmentIndex) -> bool:
        if self.since_ns is not None and index.max_time_ns < self.since_ns:
            return False
        return not (self.until_ns is not None and index.min_time_ns > self.until_ns)

    def holds(self, record: Record) -> bool:
        t = record.time_ns
        return (self.since_ns is None or t >= self.since_ns) and (self.until_ns is None or t <= self.until_ns)


async def read_records(sink: Sink, segment: SegmentKey, window: TimeRange | None = None) -> AsyncIterator[Record]:
    """The records of one segment, whole-segment checks included, limited to `window` if given."""
    data = await sink.get(segment.key)
    w = window or TimeRange()
    for record in iter_records(data, segment.key, since_ns=w.since_ns, until_ns=w.until_ns):
        if w.holds(record):
            yield record
