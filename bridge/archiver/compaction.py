"""Compaction: once an hour's partition is sealed, its many small segments become a few large ones.

Small segments keep acknowledgements quick (a prefetch window of 1000 makes segments of a few hundred
records), but an hour of them is thousands of objects on object storage: PUTs to pay for, slow
listings, slow replays. Compaction merges each sealed hour of a source into segments of up to
`max_bytes`, copying the compressed blocks as they are (segment.merge_segments), under names that say
the run they hold (`<first>-<last>.wseg`, docs/FORMAT.md §2), and removes the segments they cover.

Crash-safe at every step and idempotent: a compacted segment is written whole (atomically, if absent)
before any segment it covers is removed, readers skip covered segments while both exist
(reader.uncovered), and a rerun removes what a crashed run left covered, or merges again what
arrived late (a compacted segment is itself merged with the segments after it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby

from bridge.archive import layout
from bridge.archive.layout import SegmentKey
from bridge.archive.reader import HOUR_NS, read_index, resolve_hashed_sources
from bridge.archive.record import Source
from bridge.archive.segment import SegmentIndex, compacted_segment_name, merge_segments
from bridge.concurrency import at_most
from sinks import ObjectExists, Sink

log = logging.getLogger("warren.archiver")

# An hour is sealed this long after it ended: the writer rolls at every hour boundary, and this leaves
# room for clock skew and for the hour's last uploads.
SEAL_AFTER_NS = 15 * 60 * 1_000_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
REQUESTS_IN_FLIGHT = 16  # reads and deletes at once, within one hour of one source


@dataclass
class CompactionReport:
    hours: int = 0  # sealed partitions that were compacted (or would be)
    written: int = 0  # compacted segments written
    removed: int = 0  # segments removed, covered by compacted ones
    objects_before: int = 0  # segments in the compacted partitions before, and after
    objects_after: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"compacted {self.hours} sealed hours: {self.objects_before} segments into {self.objects_after} "
            f"({self.written} written, {self.removed} removed)"
        )
        return text + "".join(f"\n  left alone: {p}" for p in self.problems)


async def all_segment_keys(sink: Sink, prefix: str, sources: list[Source] | None) -> list[SegmentKey]:
    """Every segment, covered ones included (a crashed compaction leaves some to remove), sorted by
    source, partition and sequence."""
    found: list[SegmentKey] = []
    if sources is None:
        keys = [info.key async for info in sink.list(layout.join(prefix))]
        known = await resolve_hashed_sources(sink, prefix, keys)
        found = [seg for key in keys if (seg := layout.parse_segment_key(prefix, key, known))]
    for source in sources or ():
        scope = layout.source_prefix(prefix, source)
        keys = [info.key async for info in sink.list(scope)]
        found += [seg for key in keys if (seg := layout.parse_segment_key(prefix, key, {scope: source}))]
    found.sort(key=lambda s: (s.source, s.hour_ns, s.first_seq, s.compacted_to is None))
    return found


async def compact(
    sink: Sink,
    prefix: str = "",
    *,
    sources: Iterable[Source] | None = None,
    now_ns: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    dry_run: bool = False,
) -> CompactionReport:
    """Compact every sealed hour of the given sources (all the archive's if None)."""
    now = time.time_ns() if now_ns is None else now_ns
    report = CompactionReport()
    segments = await all_segment_keys(sink, prefix, list(sources) if sources is not None else None)
    for (source, hour), group in groupby(segments, key=lambda s: (s.source, s.hour_ns)):
        if hour + HOUR_NS + SEAL_AFTER_NS > now:
            continue
        await _compact_hour(sink, prefix, source, list(group), max_bytes, dry_run, report)
    return report


async def _compact_hour(
    sink: Sink,
    prefix: str,
    source: Source,
    segments: list[SegmentKey],
    max_bytes: int,
    dry_run: bool,
    report: CompactionReport,
) -> None:
    leftovers, live = _split_covered(segments)
    runs = await _runs(sink, live, max_bytes, report)
    merges = [run for run in runs if len(run) > 1]
    if not merges and not leftovers:
        return
    report.hours += 1
    report.objects_before += len(segments)
    report.objects_after += len(live) - sum(len(run) - 1 for run in merges)
    if dry_run:
        return
    # covered by a compacted segment a crashed run wrote
    await at_most(REQUESTS_IN_FLIGHT, [_remove(sink, seg, report) for seg in leftovers])
    for run in merges:
        datas = await at_most(REQUESTS_IN_FLIGHT, [sink.get(seg.key) for seg, _ in run])
        inputs = [(seg.key, data) for (seg, _), data in zip(run, datas, strict=True)]
        merged = merge_segments(inputs, created_ns=time.time_ns())
        first, last = run[0][1].first_seq, run[-1][1].last_seq
        directory = run[0][0].key.rsplit("/", 1)[0]
        key = f"{directory}/{compacted_segment_name(first, last)}"
        try:
            await sink.put(key, merged, if_absent=True)
        except ObjectExists:  # a crashed run wrote it: the same run (its name says so), merged then
            if await _run_of(sink, key) != (first, last):
                report.problems.append(f"{key} exists and holds another run")
                continue
        report.written += 1
        log.info("compacted", extra={"source": str(source), "key": key, "segments": len(run), "bytes": len(merged)})
        await at_most(REQUESTS_IN_FLIGHT, [_remove(sink, seg, report) for seg, _ in run if seg.key != key])


async def _run_of(sink: Sink, key: str) -> tuple[int, int] | None:
    """The run an existing segment holds, by its footer; None if it is not a segment warren can read."""
    seg = layout.parse_segment_key("", key)
    if seg is None:
        return None
    index = await read_index(sink, seg)
    return index.first_seq, index.last_seq


def _split_covered(segments: list[SegmentKey]) -> tuple[list[SegmentKey], list[SegmentKey]]:
    """(segments covered by a compacted one, the others), from one hour's sorted segments."""
    covered: list[SegmentKey] = []
    live: list[SegmentKey] = []
    covered_to = 0
    for seg in segments:
        if seg.first_seq <= covered_to:
            covered.append(seg)
            continue
        live.append(seg)
        if seg.compacted_to is not None:
            covered_to = seg.compacted_to
    return covered, live


async def _runs(
    sink: Sink, live: list[SegmentKey], max_bytes: int, report: CompactionReport
) -> list[list[tuple[SegmentKey, SegmentIndex]]]:
    """The hour's segments in runs to merge: contiguous in sequence, of one snapshot run (or none), each
    run at most `max_bytes`. A gap in the sequence (a missing segment) ends a run: it is left alone."""
    runs: list[list[tuple[SegmentKey, SegmentIndex]]] = []
    current: list[tuple[SegmentKey, SegmentIndex]] = []
    size = 0
    indexes = await at_most(REQUESTS_IN_FLIGHT, [read_index(sink, seg) for seg in live])
    for seg, index in zip(live, indexes, strict=True):
        previous = current[-1][1] if current else None
        joins = (
            previous is not None
            and index.first_seq == previous.last_seq + 1
            and index.snapshot == previous.snapshot
            and size + index.size <= max_bytes
        )
        if previous is not None and index.first_seq != previous.last_seq + 1:
            report.problems.append(f"{seg.key}: does not follow {current[-1][0].key} (a gap)")
        if not joins and current:
            runs.append(current)
            current, size = [], 0
        current.append((seg, index))
        size += index.size
    if current:
        runs.append(current)
    return runs


async def _remove(sink: Sink, seg: SegmentKey, report: CompactionReport) -> None:
    await sink.delete(seg.key)  # a missing key is no error: a rerun, or another compaction, removed it
    report.removed += 1
