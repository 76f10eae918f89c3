"""What a replay reads: per source, the records of a time window, in archive order, after a sequence."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bridge.archive.layout import SegmentKey
from bridge.archive.reader import TimeRange, list_segments, read_index
from bridge.archive.record import Record, Source, SourceKind
from bridge.archive.segment import iter_blocks, iter_records
from bridge.archive.snapshots import SnapshotRun, chosen_snapshot, completed_snapshots
from bridge.concurrency import at_most
from bridge.errors import ArchiveCorrupt
from sinks import ObjectNotFound, Sink

log = logging.getLogger("warren.replay")

READ_AHEAD = 4  # segments fetched while the ones before them are published
INDEX_READS_IN_FLIGHT = 16  # segment footers read at once when counting a selection


@dataclass
class SourcePlan:
    source: Source
    segments: list[SegmentKey]
    corrupt: list[str] = field(default_factory=list)  # segments skipped with --skip-corrupt, and why
    snapshot: SnapshotRun | None = None  # the snapshot whose records are replayed; others' are superseded
    superseded: int = 0  # records of other snapshots passed over

    def restores(self, record: Record) -> bool:
        """Whether a record of the window belongs to what this replay restores (snapshot records only
        when they are of the chosen snapshot)."""
        return record.snapshot is None or (self.snapshot is not None and record.snapshot == self.snapshot.id)

    def wanted(self, record: Record) -> bool:
        """`restores`, counting what it passes over."""
        if self.restores(record):
            return True
        self.superseded += 1
        return False


async def plan_sources(sink: Sink, names: Sequence[str], window: TimeRange) -> list[SourcePlan]:
    """Every source (or those named), with the segments that may hold records of the window, and for
    queues archived by snapshots the snapshot to restore."""
    plans: dict[Source, SourcePlan] = {}
    for seg in await list_segments(sink):
        if names and seg.source.name not in names:
            continue
        plan = plans.setdefault(seg.source, SourcePlan(seg.source, []))
        if window.may_hold(seg):
            plan.segments.append(seg)
    for plan in plans.values():
        if plan.source.kind is SourceKind.QUEUE:
            runs = await completed_snapshots(sink, "", plan.source)
            plan.snapshot = chosen_snapshot(runs, window.since_ns, window.until_ns)
    return list(plans.values())


async def records_after(
    sink: Sink, plan: SourcePlan, window: TimeRange, after_seq: int, *, skip_corrupt: bool
) -> AsyncIterator[tuple[SegmentKey, Record]]:
    """Records of the window with a sequence above `after_seq`, in order (see `batches_after`)."""
    async for seg, batch in batches_after(sink, plan, window, after_seq, skip_corrupt=skip_corrupt):
        for record in batch:
            yield seg, record


async def batches_after(
    sink: Sink, plan: SourcePlan, window: TimeRange, after_seq: int, *, skip_corrupt: bool
) -> AsyncIterator[tuple[SegmentKey, list[Record]]]:
    """Records of the window with a sequence above `after_seq`, in order, a block's worth at a time: a
    replay then spends per message only what publishing it takes.

    A corrupt segment raises ArchiveCorrupt (the source stops there), or with `skip_corrupt` is
    reported in `plan.corrupt` and passed over.
    """
    segments = plan.segments
    wanted = [
        seg
        for i, seg in enumerate(segments)
        if i + 1 >= len(segments) or segments[i + 1].first_seq > after_seq + 1  # else wholly replayed already
    ]
    done_through = after_seq  # every record up to here was yielded or passed over
    async for listed, data in fetched_ahead(sink, wanted):
        seg = listed
        try:
            if isinstance(data, SegmentVanished):
                # Compaction replaced it meanwhile: read on in the compacted segment that covers it.
                seg, data = await _covering(sink, plan.source, listed, data)
            if isinstance(data, BaseException):
                raise data
            for entry, records in iter_blocks(data, seg.key, **window.block_bounds):
                if not records or records[-1].seq <= done_through:
                    continue
                if records[0].seq <= done_through:
                    records = [r for r in records if r.seq > done_through]
                done_through = records[-1].seq
                if not window.holds_block(entry):
                    records = [r for r in records if window.holds(r)]
                if any(r.snapshot is not None for r in records):
                    records = [r for r in records if plan.wanted(r)]
                if records:
                    yield seg, records
        except ArchiveCorrupt as err:
            if not skip_corrupt:
                raise
            log.error("skipping a corrupt segment", extra={"segment": seg.key, "reason": err.what})
            plan.corrupt.append(f"{seg.key}: {err.what}")


class SegmentVanished(ArchiveCorrupt):
    """A listed segment is gone: compaction may have replaced it."""


async def _covering(
    sink: Sink, source: Source, gone: SegmentKey, error: SegmentVanished
) -> tuple[SegmentKey, bytes | SegmentVanished]:
    """The compacted segment that now holds `gone`'s records, and its bytes; `error` if there is none."""
    for seg in await list_segments(sink, "", source):
        if seg.compacted_to is not None and seg.first_seq <= gone.first_seq <= seg.compacted_to:
            return seg, await sink.get(seg.key)
    return gone, error


async def fetched_ahead(
    sink: Sink, segments: Sequence[SegmentKey], depth: int = READ_AHEAD
) -> AsyncIterator[tuple[SegmentKey, bytes | SegmentVanished]]:
    """Each segment's bytes, in order, with the next ones already being fetched (`depth` GETs in flight):
    on object storage a GET is a round trip, and the replay publishes meanwhile. A segment that cannot
    be read stops the iteration with its error; one that vanished comes as SegmentVanished."""
    pending: deque[tuple[SegmentKey, asyncio.Task[bytes]]] = deque()
    upcoming = iter(segments)
    try:
        while True:
            while len(pending) < depth:
                seg = next(upcoming, None)
                if seg is None:
                    break
                pending.append((seg, asyncio.ensure_future(sink.get(seg.key))))
            if not pending:
                return
            seg, fetch = pending.popleft()
            try:
                data: bytes | SegmentVanished = await fetch
            except ObjectNotFound:
                data = SegmentVanished("segment vanished while being read", segment=seg.key)
            yield seg, data
    finally:
        for _, fetch in pending:
            fetch.cancel()


async def refresh(sink: Sink, plan: SourcePlan, window: TimeRange) -> int:
    """Follow mode: add segments committed since the plan was made; returns how many are new."""
    known = {seg.key for seg in plan.segments}
    new = [s for s in await list_segments(sink, "", plan.source) if s.key not in known and window.may_hold(s)]
    plan.segments.extend(new)
    plan.segments.sort(key=lambda s: s.first_seq)
    return len(new)


@dataclass
class DrySummary:
    source: Source
    records: int = 0
    bytes: int = 0
    copies: int = 0  # the archiver proved them copies: a replay skips them (unless --keep-duplicates)
    possible_copies: int = 0  # of `records`: redelivered with an earlier record's content, unproven
    first_ns: int | None = None
    last_ns: int | None = None


async def dry_run(
    sink: Sink, plan: SourcePlan, window: TimeRange, after_seq: int, *, keep_copies: bool = False
) -> DrySummary:
    """What a replay of this source would publish: messages, their bytes (body and properties), and
    the capture times they span. Segments the window cannot touch are skipped by their footers."""
    summary = DrySummary(plan.source)
    for seg in plan.segments:
        index = await read_index(sink, seg)
        if not window.overlaps(index) or index.last_seq <= after_seq:
            continue
        data = await sink.get(seg.key)
        for record in iter_records(data, seg.key, **window.block_bounds):
            if record.seq <= after_seq or not window.holds(record) or not plan.wanted(record):
                continue
            if record.copy_of is not None and not keep_copies:
                summary.copies += 1
                continue
            summary.possible_copies += record.possible_copy_of is not None
            summary.records += 1
            summary.bytes += len(record.body) + len(record.raw_properties)
            t = record.captured_ns
            summary.first_ns = t if summary.first_ns is None else min(summary.first_ns, t)
            summary.last_ns = t if summary.last_ns is None else max(summary.last_ns, t)
    return summary


async def count_selected(
    sink: Sink, plan: SourcePlan, window: TimeRange, after_seq: int, *, keep_copies: bool = False
) -> int:
    """How many records a replay of this source publishes: from the footers where a whole segment is
    in, by reading the few segments at the edges of the window or of an earlier run's progress.

    The footers are read several at once: on object storage each is a request or two of round-trip
    time, and an hour not yet compacted can hold thousands of segments."""

    async def count(seg: SegmentKey) -> int:
        index = await read_index(sink, seg)
        if not window.overlaps(index) or index.last_seq <= after_seq:
            return 0
        inside = (window.since_ns is None or index.min_time_ns >= window.since_ns) and (
            window.until_ns is None or index.max_time_ns <= window.until_ns
        )
        if inside and index.first_seq > after_seq and index.snapshot is None:
            return index.records - (0 if keep_copies else index.copies)
        total = 0
        data = await sink.get(seg.key)
        for record in iter_records(data, seg.key, **window.block_bounds):
            if record.seq <= after_seq or not window.holds(record):
                continue
            total += plan.restores(record) and (keep_copies or record.copy_of is None)
        return total

    return sum(await at_most(INDEX_READS_IN_FLIGHT, [count(seg) for seg in plan.segments]))
