"""Retention: remove the sealed hours older than a cut, whole partitions only (`warren prune`, and the
archiver's `retention` setting).

Per source, oldest first, a partition goes only when it ended before the cut and every partition
before it goes too, so what stays is always one run of sequences. A source's retention mark
(archive/pruned.py) is written first, naming the last sequence removed; then its segments are
deleted. A prune that stops part-way is finished by the next run; readers meanwhile still read what
is left. The definitions saved before the cut go too, but for the newest of them, which still
describes the topology of the oldest records kept.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import groupby

from bridge.archive.definitions import saved_definitions
from bridge.archive.layout import SegmentKey
from bridge.archive.ledger import entry_keys
from bridge.archive.pruned import MIN_RETENTION_NS, PrunedMark, read_pruned, write_pruned
from bridge.archive.reader import HOUR_NS, read_index
from bridge.archive.record import Source
from bridge.archiver.compaction import all_segment_keys
from bridge.concurrency import at_most
from bridge.errors import ConfigError
from bridge.timespec import format_time
from sinks import Sink

log = logging.getLogger("warren.archiver")

REQUESTS_IN_FLIGHT = 16


@dataclass
class SourcePrune:
    source: Source
    hours: int = 0
    segments: int = 0
    records: int = 0
    bytes: int = 0
    through_seq: int = 0
    first_kept_ns: int | None = None  # the oldest partition kept, if any

    def line(self, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        kept = f"; kept from {_hour(self.first_kept_ns)}" if self.first_kept_ns is not None else "; nothing kept"
        return (
            f"{self.source}: {verb} {self.hours} sealed hours, {self.segments} segments, {self.records} records, "
            f"{self.bytes} bytes (sequences through {self.through_seq}){kept}"
        )


@dataclass
class PruneReport:
    cut_ns: int
    dry_run: bool
    sources: list[SourcePrune] = field(default_factory=list)
    definitions: int = 0  # saved definitions removed (or that would be)

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [s.line(self.dry_run) for s in self.sources]
        out.append(
            f"{verb} {sum(s.segments for s in self.sources)} segments of {len(self.sources)} sources and "
            f"{self.definitions} saved definitions, all from before {_hour(self.cut_ns)}"
            + ("; run again with --apply to remove them" if self.dry_run and self.sources else "")
        )
        return out


async def prune(
    sink: Sink,
    older_than_ns: int,
    *,
    prefix: str = "",
    sources: list[Source] | None = None,
    now_ns: int | None = None,
    dry_run: bool = True,
) -> PruneReport:
    """Remove (or, dry, list) every sealed partition that ended more than `older_than_ns` ago."""
    if older_than_ns < MIN_RETENTION_NS:
        raise ConfigError("a retention shorter than 2h would race the archiver's own uploads")
    now = time.time_ns() if now_ns is None else now_ns
    cut = now - older_than_ns
    report = PruneReport(cut, dry_run)
    segments = await all_segment_keys(sink, prefix, sources)
    for source, group in groupby(segments, key=lambda s: s.source):
        result = await _prune_source(sink, prefix, source, list(group), cut, dry_run)
        if result.segments:
            report.sources.append(result)
    report.definitions = await _prune_definitions(sink, prefix, cut, dry_run)
    return report


async def _prune_source(
    sink: Sink, prefix: str, source: Source, segments: list[SegmentKey], cut: int, dry_run: bool
) -> SourcePrune:
    result = SourcePrune(source)
    doomed: list[SegmentKey] = []
    for hour, group in groupby(segments, key=lambda s: s.hour_ns):
        if hour + HOUR_NS > cut:  # ended before the cut: sealed long since (MIN_RETENTION_NS > SEAL_AFTER_NS)
            result.first_kept_ns = hour
            break
        hour_segments = list(group)
        doomed += hour_segments
        result.hours += 1
    if not doomed:
        return result
    indexes = await at_most(REQUESTS_IN_FLIGHT, [read_index(sink, seg) for seg in doomed])
    result.segments = len(doomed)
    result.records = sum(i.records for i in indexes)
    result.bytes = sum(i.size for i in indexes)
    result.through_seq = max(i.last_seq for i in indexes)
    if dry_run:
        return result
    earlier = await read_pruned(sink, prefix, source)
    if earlier is None or earlier.through_seq < result.through_seq:
        await write_pruned(sink, prefix, source, PrunedMark(result.through_seq, cut, time.time_ns()))
    await at_most(REQUESTS_IN_FLIGHT, [sink.delete(seg.key) for seg in doomed])
    kept_from = result.first_kept_ns if result.first_kept_ns is not None else cut
    await _prune_ledger(sink, prefix, source, kept_from)
    log.info("pruned", extra={"source": str(source), "through_seq": result.through_seq, "segments": len(doomed)})
    return result


async def _prune_ledger(sink: Sink, prefix: str, source: Source, kept_from_ns: int) -> None:
    """Gap-ledger entries of the hours removed go with them, but for the newest: a gap that began then
    and ends in what is kept still shows."""
    before = [key for at, key in await entry_keys(sink, prefix, source) if at < kept_from_ns]
    await at_most(REQUESTS_IN_FLIGHT, [sink.delete(key) for key in before[:-1]])


async def _prune_definitions(sink: Sink, prefix: str, cut: int, dry_run: bool) -> int:
    before = [key for saved, key in await saved_definitions(sink, prefix) if saved < cut]
    doomed = before[:-1]  # the newest before the cut describes the oldest records kept
    if not dry_run:
        await at_most(REQUESTS_IN_FLIGHT, [sink.delete(key) for key in doomed])
    return len(doomed)


def _hour(ns: int | None) -> str:
    return "-" if ns is None else format_time(ns)
