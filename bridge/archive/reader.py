"""Reading an archive on any sink: its sources, their segments, the segments' indexes and records."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bridge.archive import layout
from bridge.archive.clocks import Clock, record_time
from bridge.archive.layout import SegmentKey
from bridge.archive.record import Record, Source
from bridge.archive.segment import (
    HEADER_FIXED,
    MAGIC,
    TRAILER_SIZE,
    BlockEntry,
    SegmentIndex,
    first_seq_from_name,
    footer_length,
    iter_records,
    parse_header,
    parse_index,
)
from bridge.archive.source_object import read_source_object
from bridge.concurrency import at_most
from bridge.errors import ArchiveCorrupt
from sinks import ObjectNotFound, Sink

log = logging.getLogger("warren.archive")

TAIL_GUESS = 64 * 1024  # one read usually brings the trailer and the whole footer
HEAD_GUESS = 4096  # a header holds little more than the source's names (at most 255 bytes each)
MAX_HEADER = 1024 * 1024
HOUR_NS = 3600 * 1_000_000_000
# A stream record's time is the broker's clock, its partition the archiver's: allow for skew between them.
CLOCK_SKEW_NS = 300 * 1_000_000_000
RESOLVE_AHEAD = 16  # hashed directories resolved concurrently


async def list_segments(sink: Sink, prefix: str = "", source: Source | None = None) -> list[SegmentKey]:
    """Segment keys, grouped by source and in sequence order within each, each with its true source
    (for a directory with hashed names, as its `_source` object or a segment header says)."""
    if source is not None:
        scope = layout.source_prefix(prefix, source)
        keys = [info.key async for info in sink.list(scope)]
        known = {scope: source}  # the directory is a function of the source: no lookup needed
    else:
        keys = [info.key async for info in sink.list(layout.join(prefix))]
        known = await resolve_hashed_sources(sink, prefix, keys)
    found = [seg for key in keys if (seg := layout.parse_segment_key(prefix, key, known))]
    found.sort(key=lambda s: (s.source, s.first_seq, s.compacted_to is None))
    return uncovered(found)


def uncovered(segments: list[SegmentKey]) -> list[SegmentKey]:
    """Without the segments a compacted one covers (compaction writes the compacted segment first and
    removes the ones it covers after it, so for a while both are listed). `segments` sorted as above."""
    kept: list[SegmentKey] = []
    covered_source, covered_to = None, 0
    for seg in segments:
        if seg.source == covered_source and seg.first_seq <= covered_to:
            continue
        kept.append(seg)
        if seg.compacted_to is not None:
            covered_source, covered_to = seg.source, seg.compacted_to
    return kept


async def resolve_hashed_sources(sink: Sink, prefix: str, keys: list[str]) -> dict[str, Source]:
    """The true source of every hashed source directory among `keys` that holds segments."""
    segments: dict[str, list[str]] = {}
    described: set[str] = set()
    for key in keys:
        directory = layout.hashed_source_dir(prefix, key)
        if directory is None:
            continue
        if key == directory + layout.SOURCE_OBJECT:
            described.add(directory)
        elif first_seq_from_name(key) is not None:
            segments.setdefault(directory, []).append(key)
    limit = asyncio.Semaphore(RESOLVE_AHEAD)

    async def resolve(directory: str) -> tuple[str, Source | None]:
        async with limit:
            return directory, await _hashed_source(sink, prefix, directory, directory in described, segments[directory])

    resolved = await asyncio.gather(*(resolve(d) for d in segments))
    return {directory: source for directory, source in resolved if source is not None}


async def _hashed_source(
    sink: Sink, prefix: str, directory: str, described: bool, segment_keys: list[str]
) -> Source | None:
    """From `_source` if there is one, else from the first readable segment header; each must name a
    source that lives in `directory`, or it is not believed."""
    if described:
        key = directory + layout.SOURCE_OBJECT
        try:
            source = await read_source_object(sink, key)
        except ArchiveCorrupt as err:
            log.warning("unreadable source object", extra={"key": key, "reason": err.what})
            source = None
        if source is not None and layout.source_prefix(prefix, source) == directory:
            return source
        if source is not None:
            log.warning("source object names a source of another directory", extra={"key": key})
    for key in segment_keys:
        try:
            source = await read_header_source(sink, key)
        except (ArchiveCorrupt, ObjectNotFound) as err:
            log.warning("cannot read the source from a segment header", extra={"segment": key, "reason": str(err)})
            continue
        if layout.source_prefix(prefix, source) == directory:
            return source
        log.warning("segment header names a source of another directory", extra={"segment": key})
    log.warning("skipping a directory whose source cannot be told", extra={"directory": directory})
    return None


async def read_header_source(sink: Sink, key: str) -> Source:
    """The source a segment's header names, with one range read (two for an unusually large header)."""
    head = await sink.get_range(key, 0, HEAD_GUESS)
    if len(head) >= HEADER_FIXED:
        wanted = HEADER_FIXED + int.from_bytes(head[len(MAGIC) : len(MAGIC) + 4], "big")  # + H
        if len(head) < wanted <= MAX_HEADER:  # a larger one is damaged: parse_header says how
            head = await sink.get_range(key, 0, wanted)
    header, _ = parse_header(head, key)
    try:
        return Source.from_map(header["source"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArchiveCorrupt(f"header names no valid source: {err}", segment=key, offset=HEADER_FIXED) from err


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
    """A closed interval of record times in UTC nanoseconds; None leaves that side open. `clock` says
    which of a record's times counts (clocks.py); None: the one the footers index (`Record.time_ns`)."""

    since_ns: int | None = None
    until_ns: int | None = None
    clock: Clock | None = None

    def may_hold(self, seg: SegmentKey) -> bool:
        # Partitions are by capture time, and a record's time is not after its capture time (a stream
        # chunk is stored before we read it, a message published before it is stored; up to clock
        # skew), so only `since` can prune by partition.
        return self.since_ns is None or seg.hour_ns + HOUR_NS + CLOCK_SKEW_NS > self.since_ns

    def overlaps(self, index: SegmentIndex) -> bool:
        """Whether the segment may hold a record of the window, by its footer."""
        if self.clock is None:
            low, high = index.min_time_ns, index.max_time_ns
        elif self.clock is Clock.CAPTURED:
            low, high = index.first_captured_ns, index.last_captured_ns
        else:
            return True  # the footer does not index the producer's or the broker's clock
        return (self.since_ns is None or high >= self.since_ns) and (self.until_ns is None or low <= self.until_ns)

    @property
    def block_bounds(self) -> dict[str, int | None]:
        """`iter_records`' since/until, to skip a segment's blocks by their index, which holds
        `Record.time_ns`: only without a clock of its own."""
        if self.clock is not None:
            return {"since_ns": None, "until_ns": None}
        return {"since_ns": self.since_ns, "until_ns": self.until_ns}

    def holds_block(self, entry: BlockEntry) -> bool:
        """Whether every record of a block is in the window, by its footer entry (which indexes
        `Record.time_ns`, so only without a clock of its own)."""
        return (
            self.clock is None
            and (self.since_ns is None or entry.min_time_ns >= self.since_ns)
            and (self.until_ns is None or entry.max_time_ns <= self.until_ns)
        )

    def holds(self, record: Record) -> bool:
        t = record_time(record, self.clock)
        return (self.since_ns is None or t >= self.since_ns) and (self.until_ns is None or t <= self.until_ns)


async def read_records(sink: Sink, segment: SegmentKey, window: TimeRange | None = None) -> AsyncIterator[Record]:
    """The records of one segment, whole-segment checks included, limited to `window` if given."""
    data = await sink.get(segment.key)
    w = window or TimeRange()
    for record in iter_records(data, segment.key, **w.block_bounds):
        if w.holds(record):
            yield record


FOOTERS_IN_FLIGHT = 16  # footers fetched at once: on object storage each is a round trip or two


async def read_footers(sink: Sink) -> list[SegmentIndex]:
    """Every segment's footer (`ls`, its timeline, `drill`), several requests at once."""
    return await at_most(FOOTERS_IN_FLIGHT, [read_index(sink, seg) for seg in await list_segments(sink)])
