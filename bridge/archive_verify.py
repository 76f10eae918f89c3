"""`warren verify`: read every segment, check every CRC and footer, and sequence continuity per source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby

from bridge.archive.checkpoint import read_checkpoint
from bridge.archive.reader import list_segments
from bridge.archive.record import Source
from bridge.archive.segment import verify_segment
from bridge.errors import ArchiveCorrupt
from sinks import Sink, open_sink


@dataclass
class SourceReport:
    source: Source
    segments: int = 0
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        span = f"sequences {self.first_seq}..{self.last_seq}" if self.first_seq is not None else "no readable segment"
        head = f"{'OK  ' if not self.problems else 'FAIL'} {self.source}: {self.segments} segments, "
        return head + f"{self.records} records, {span}" + "".join(f"\n     - {p}" for p in self.problems)


async def verify_archive(sink: Sink, out: Callable[[str], None] = print) -> list[SourceReport]:
    reports = []
    segments = await list_segments(sink)
    if not segments:
        out(f"no segments in {sink.url}: nothing to verify (is this the archive's root?)")
        return reports
    for source, group in groupby(segments, key=lambda s: s.source):
        report = SourceReport(source)
        expected: int | None = 1  # sequences start at 1 and segments tile them without gaps
        for seg in group:
            report.segments += 1
            try:
                index = verify_segment(await sink.get(seg.key), seg.key)
            except ArchiveCorrupt as err:
                report.problems.append(str(err))
                expected = None  # resynchronise on the next segment, so one fault is reported once
                continue
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
        last = report.last_seq or 0
        if checkpoint is not None and checkpoint.last_seq > last:
            report.problems.append(
                f"the checkpoint says sequence {checkpoint.last_seq} is committed, the segments end at {last}"
                " (a missing segment at the end)"
            )
        out(report.line())
        reports.append(report)
    failed = sum(1 for r in reports if r.problems)
    total = sum(r.segments for r in reports)
    out(f"verified {total} segments of {len(reports)} sources: " + (f"{failed} with problems" if failed else "sound"))
    return reports


async def verify_uri(uri: str) -> bool:
    """True when the archive holds at least one source and every one of them is sound."""
    async with open_sink(uri) as sink:
        reports = await verify_archive(sink)
    return bool(reports) and not any(r.problems for r in reports)
