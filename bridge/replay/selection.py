"""What a replay reads: per source, the records of a time window, in archive order, after a sequence."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from bridge.archive.layout import SegmentKey
from bridge.archive.reader import TimeRange, list_segments, read_index
from bridge.archive.record import Record, Source
from bridge.archive.segment import iter_records
from bridge.errors import ArchiveCorrupt
from sinks import Sink

log = logging.getLogger("warren.replay")


@dataclass
class SourcePlan:
    source: Source
    segments: list[SegmentKey]
    corrupt: list[str] = field(default_factory=list)  # segments skipped with --skip-corrupt, and why


async def plan_sources(sink: Sink, names: Sequence[str], window: TimeRange) -> list[SourcePlan]:
    """Every source (or those named), with the segments that may hold records of the window."""
    plans: dict[Source, SourcePlan] = {}
    for seg in await list_segments(sink):
        if names and seg.source.name not in names:
            continue
        plan = plans.setdefault(seg.source, SourcePlan(seg.source, []))
        if window.may_hold(seg):
            plan.segments.append(seg)
    return list(plans.values())


async def records_after(
    sink: Sink, plan: SourcePlan, window: TimeRange, after_seq: int, *, skip_corrupt: bool
) -> AsyncIterator[tuple[SegmentKey, Record]]:
    """Records of the window with a sequence above `after_seq`, in order.

    A corrupt segment raises ArchiveCorrupt (the source stops there), or with `skip_corrupt` is
    reported in `plan.corrupt` and passed over.
    """
    segments = plan.segments
    for i, seg in enumerate(segments):
        following = segments[i + 1] if i + 1 < len(segments) else None
        if following is not None and following.first_seq <= after_seq + 1:
            continue  # wholly replayed already
        try:
            data = await sink.get(seg.key)
            for record in iter_records(data, seg.key, since_ns=window.since_ns, until_ns=window.until_ns):
                if record.seq > after_seq and window.holds(record):
                    yield seg, record
        except ArchiveCorrupt as err:
            if not skip_corrupt:
                raise
            log.error("skipping a corrupt segment", extra={"segment": seg.key, "reason": err.what})
            plan.corrupt.append(f"{seg.key}: {err.what}")


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
    first_ns: int | None = None
    last_ns: int | None = None


async def dry_run(sink: Sink, plan: SourcePlan, window: TimeRange, after_seq: int) -> DrySummary:
    """What a replay of this source would publish: messages, their bytes (body and properties), and
    the capture times they span. Segments the window cannot touch are skipped by their footers."""
    summary = DrySummary(plan.source)
    for seg in plan.segments:
        index = await read_index(sink, seg)
        if not window.overlaps(index) or index.last_seq <= after_seq:
            continue
        data = await sink.get(seg.key)
        for record in iter_records(data, seg.key, since_ns=window.since_ns, until_ns=window.until_ns):
            if record.seq > after_seq and window.holds(record):
                _add(summary, 1, len(record.body) + len(record.raw_properties), record.captured_ns, record.captured_ns)
    return summary


def _add(s: DrySummary, records: int, size: int, first: int, last: int) -> None:
    s.records += records
    s.bytes += size
    s.first_ns = first if s.first_ns is None else min(s.first_ns, first)
    s.last_ns = last if s.last_ns is None else max(s.last_ns, last)
