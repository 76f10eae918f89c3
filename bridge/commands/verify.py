"""`warren verify`: read every segment, check every CRC and footer, and sequence continuity per source."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby

from bridge.archive import layout
from bridge.archive.checkpoint import read_checkpoint
from bridge.archive.ledger import Gap, source_gaps
from bridge.archive.pruned import read_pruned
from bridge.archive.reader import list_segments
from bridge.archive.record import Source
from bridge.archive.segment import SegmentIndex, iter_records, verify_segment
from bridge.archive.source_object import read_source_object
from bridge.archiver.compaction import all_segment_keys
from bridge.errors import EXIT_CHECK_FAILED, EXIT_OK, ArchiveCorrupt
from protocol.loop import run
from sinks import Sink, open_sink

GAPS_SHOWN = 10  # the latest; `warren inspect --gaps` lists them all


@dataclass
class SourceReport:
    source: Source
    segments: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    covered: int = 0  # segments a compacted one holds too, not removed yet (a compaction under way, or crashed)
    problems: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)  # the ledger's: not problems of the archive, but told

    def line(self) -> str:
        span = f"sequences {self.first_seq}..{self.last_seq}" if self.first_seq is not None else "no readable segment"
        head = f"{'OK  ' if not self.problems else 'FAIL'} {self.source}: {self.segments} segments, "
        covered = f"; {self.covered} covered by compacted segments, to be removed" if self.covered else ""
        lost = sum(g.lost for g in self.gaps)
        gaps = f"; {len(self.gaps)} gaps in archiving" if self.gaps else ""
        gaps += f", up to {lost} stream messages lost before they were archived" if lost else ""
        problems = "".join(f"\n     - {p}" for p in self.problems)
        return (
            head
            + f"{self.records} records, {span}{covered}{gaps}"
            + "".join(f"\n     gap: {g.line()}" for g in self.gaps[-GAPS_SHOWN:])
            + problems
        )


async def verify_archive(sink: Sink, out: Callable[[str], None] = print) -> list[SourceReport]:
    reports: list[SourceReport] = []
    segments = await list_segments(sink)
    covered = Counter(seg.source for seg in await all_segment_keys(sink, "", None)) - Counter(
        seg.source for seg in segments
    )
    if not segments:
        out(f"no segments in {sink.url}: nothing to verify (is this the archive's root?)")
        return reports
    for source, group in groupby(segments, key=lambda s: s.source):
        report = SourceReport(source, covered=covered[source])
        pruned = await read_pruned(sink, "", source)
        through = pruned.through_seq if pruned is not None else 0
        # Sequences start at 1 (after what retention removed) and segments tile them without gaps.
        expected: int | None = through + 1
        read: list[SegmentIndex] = []  # dates the end of a run that ended without a word (the ledger)
        for seg in group:
            report.segments += 1
            try:
                data = await sink.get(seg.key)
                index = verify_segment(data, seg.key)
                read.append(index)
                if index.copies or index.possible_copies:
                    report.problems.extend(_copy_problems(data, seg.key))
            except ArchiveCorrupt as err:
                report.problems.append(str(err))
                expected = None  # resynchronise on the next segment, so one fault is reported once
                continue
            if index.last_seq <= through:
                continue  # retention removes it: a prune that stopped part-way (a rerun finishes it)
            if index.source != source:
                report.problems.append(f"{seg.key}: its header names {index.source}, its key says {source}")
            if index.first_seq != seg.first_seq:
                report.problems.append(f"{seg.key}: starts at sequence {index.first_seq}, named {seg.first_seq}")
            if expected is None:
                pass
            elif index.first_seq > expected:
                report.problems.append(
                    f"sequences {expected}..{index.first_seq - 1} are missing before {seg.key} (a missing segment)"
                )
            elif index.first_seq < expected:
                report.problems.append(f"{seg.key}: overlaps the previous segment (starts at {index.first_seq})")
            expected = index.last_seq + 1
            report.records += index.records
            report.first_seq = index.first_seq if report.first_seq is None else report.first_seq
            report.last_seq = index.last_seq
        checkpoint = await read_checkpoint(sink, "", source)
        last = report.last_seq or through
        if checkpoint is not None and checkpoint.last_seq > last:
            report.problems.append(
                f"the checkpoint says sequence {checkpoint.last_seq} is committed, the segments end at {last}"
                " (a missing segment at the end)"
            )
        if layout.has_hashed_names(source):
            report.problems.extend(await _source_object_problems(sink, source))
        try:
            report.gaps = await source_gaps(sink, "", source, read)
        except ArchiveCorrupt as err:
            report.problems.append(str(err))
        out(report.line())
        reports.append(report)
    failed = sum(1 for r in reports if r.problems)
    total = sum(r.segments for r in reports)
    out(f"verified {total} segments of {len(reports)} sources: " + (f"{failed} with problems" if failed else "sound"))
    return reports


def _copy_problems(data: bytes, key: str) -> list[str]:
    """A record marked a copy (or a possible one) must be a redelivery and name an earlier record."""
    problems = []
    for record in iter_records(data, key):
        for what, seq in (("a copy", record.copy_of), ("a possible copy", record.possible_copy_of)):
            if seq is None:
                continue
            if not 1 <= seq < record.seq:
                problems.append(f"{key}: record #{record.seq} is marked {what} of #{seq}, which is not before it")
            elif not record.redelivered:
                problems.append(f"{key}: record #{record.seq} is marked {what} but was not a redelivery")
    return problems


async def _source_object_problems(sink: Sink, source: Source) -> list[str]:
    """A source whose directory holds a hashed name must say its names in `_source` (readers fall back
    to segment headers, but an archive without it is not as warren writes it)."""
    key = layout.source_object_key("", source)
    try:
        described = await read_source_object(sink, key)
    except ArchiveCorrupt as err:
        return [str(err)]
    if described is None:
        return [f"{key}: missing (the source's names are read from its segment headers)"]
    if described != source:
        return [f"{key}: names {described}, the segments {source}"]
    return []


async def verify_uri(uri: str) -> bool:
    """True when the archive holds at least one source and every one of them is sound."""
    async with open_sink(uri) as sink:
        reports = await verify_archive(sink)
    return bool(reports) and not any(r.problems for r in reports)


EXAMPLES = (
    "examples:\n  warren verify file:///var/lib/warren\n  warren verify s3://archive-bucket/warren?region=eu-west-1"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE", help="archive URI or path")


def from_args(args: argparse.Namespace) -> int:
    return EXIT_OK if run(verify_uri(args.archive)) else EXIT_CHECK_FAILED
