"""`warren ls`: what an archive holds, per source."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.archive.layout import SegmentKey
from bridge.archive.reader import list_segments, read_index
from bridge.archive.record import Source
from bridge.archive.segment import SegmentIndex
from bridge.errors import EXIT_OK
from bridge.timespec import format_time
from protocol.loop import run
from sinks import Sink, open_sink

READ_AHEAD = 16  # footers fetched concurrently: remote sinks answer each in a round trip


@dataclass
class SourceSummary:
    source: Source
    records: int = 0
    segments: int = 0
    bytes: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    copies: int = 0  # proven copies of earlier records: a replay skips them
    possible_copies: int = 0  # possibly copies, unproven: a replay keeps them and counts them

    def add(self, index: SegmentIndex) -> None:
        self.records += index.records
        self.copies += index.copies
        self.possible_copies += index.possible_copies
        self.segments += 1
        self.bytes += index.size
        if self.first_ns is None or index.first_captured_ns < self.first_ns:
            self.first_ns = index.first_captured_ns
        if self.last_ns is None or index.last_captured_ns > self.last_ns:
            self.last_ns = index.last_captured_ns

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source.name,
            "vhost": self.source.vhost,
            "kind": str(self.source.kind),
            "records": self.records,
            "segments": self.segments,
            "bytes": self.bytes,
            "copies": self.copies,
            "possible_copies": self.possible_copies,
            "first": format_time(self.first_ns) if self.first_ns is not None else None,
            "last": format_time(self.last_ns) if self.last_ns is not None else None,
        }


async def summarize(sink: Sink) -> list[SourceSummary]:
    segments = await list_segments(sink)
    summaries: dict[Source, SourceSummary] = {}
    limit = asyncio.Semaphore(READ_AHEAD)

    async def index_of(seg: SegmentKey) -> SegmentIndex:
        async with limit:
            return await read_index(sink, seg)

    for index in await asyncio.gather(*(index_of(seg) for seg in segments)):
        summaries.setdefault(index.source, SourceSummary(index.source)).add(index)
    return sorted(summaries.values(), key=lambda s: s.source)


def render_json(summaries: Iterable[SourceSummary]) -> str:
    return json.dumps([s.to_json() for s in summaries], indent=2)


def render_table(summaries: list[SourceSummary]) -> str:
    if not summaries:
        return "the archive is empty"
    header = ("VHOST", "KIND", "SOURCE", "RECORDS", "COPIES", "POSSIBLE", "SEGMENTS", "BYTES", "FIRST", "LAST")
    rows = [header] + [
        (
            s.source.vhost,
            str(s.source.kind),
            s.source.name,
            str(s.records),
            str(s.copies),
            str(s.possible_copies),
            str(s.segments),
            str(s.bytes),
            format_time(s.first_ns) if s.first_ns is not None else "-",
            format_time(s.last_ns) if s.last_ns is not None else "-",
        )
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def list_archive(uri: str, *, as_json: bool) -> str:
    async with open_sink(uri) as sink:
        summaries = await summarize(sink)
    return render_json(summaries) if as_json else render_table(summaries)


EXAMPLES = (
    "examples:\n  warren ls file:///var/lib/warren\n  warren ls s3://archive-bucket/warren?region=eu-west-1 --json"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE", help="archive URI (file:///var/lib/warren, s3://...) or path")
    parser.add_argument("--json", action="store_true", help="one JSON array, for scripts")


def from_args(args: argparse.Namespace) -> int:
    print(run(list_archive(args.archive, as_json=args.json)))
    return EXIT_OK
