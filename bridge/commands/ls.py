"""`warren ls`: what an archive holds, per source; with --timeline, its density over time."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.archive.ledger import Gap, archive_gaps
from bridge.archive.reader import read_footers
from bridge.archive.record import Source
from bridge.archive.segment import SegmentIndex
from bridge.archive.timeline import DEFAULT_WIDTH, timeline
from bridge.errors import EXIT_OK, ConfigError
from bridge.timespec import format_time, parse_time
from protocol.loop import run
from sinks import Sink, open_sink


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
    gaps: list[Gap] = field(default_factory=list)  # spells nobody archived it, and stream offsets lost (ledger)

    @property
    def lost(self) -> int:
        return sum(g.lost for g in self.gaps)

    def gaps_cell(self) -> str:
        return f"{len(self.gaps)} (up to {self.lost} lost)" if self.lost else str(len(self.gaps))

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
            "gaps": [g.to_json() for g in self.gaps],
            "lost_offsets": self.lost,
            "first": format_time(self.first_ns) if self.first_ns is not None else None,
            "last": format_time(self.last_ns) if self.last_ns is not None else None,
        }


async def summarize(sink: Sink) -> list[SourceSummary]:
    summaries: dict[Source, SourceSummary] = {}
    indexes = await read_footers(sink)
    for index in indexes:
        summaries.setdefault(index.source, SourceSummary(index.source)).add(index)
    for source, gaps in (await archive_gaps(sink, indexes)).items():
        summaries[source].gaps = gaps
    return sorted(summaries.values(), key=lambda s: s.source)


def render_json(summaries: Iterable[SourceSummary]) -> str:
    return json.dumps([s.to_json() for s in summaries], indent=2)


def render_table(summaries: list[SourceSummary]) -> str:
    if not summaries:
        return "the archive is empty"
    header = ("VHOST", "KIND", "SOURCE", "RECORDS", "COPIES", "POSSIBLE", "SEGMENTS", "BYTES", "FIRST", "LAST", "GAPS")
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
            s.gaps_cell(),
        )
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


async def list_archive(uri: str, *, as_json: bool) -> str:
    async with open_sink(uri) as sink:
        summaries = await summarize(sink)
    return render_json(summaries) if as_json else render_table(summaries)


async def draw_timeline(uri: str, *, since_ns: int | None, until_ns: int | None, width: int) -> str:
    async with open_sink(uri) as sink:
        indexes = await read_footers(sink)
        gaps = await archive_gaps(sink, indexes)
    return timeline(indexes, since_ns=since_ns, until_ns=until_ns, width=width, gaps=gaps).render()


EXAMPLES = (
    "examples:\n"
    "  warren ls file:///var/lib/warren\n"
    "  warren ls s3://archive-bucket/warren?region=eu-west-1 --json\n"
    "  warren ls file:///var/lib/warren --timeline --since -24h --width 96"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE", help="archive URI (file:///var/lib/warren, s3://...) or path")
    parser.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    parser.add_argument(
        "--timeline", action="store_true", help="draw each source's message density over time, quiet spells marked"
    )
    parser.add_argument(
        "--since", metavar="T", help="with --timeline: from T (RFC 3339, or -24h); default: the first record"
    )
    parser.add_argument("--until", metavar="T", help="with --timeline: to T; default: the last record")
    parser.add_argument(
        "--width", type=int, default=DEFAULT_WIDTH, help=f"with --timeline: columns (default {DEFAULT_WIDTH})"
    )


def from_args(args: argparse.Namespace) -> int:
    if not args.timeline:
        if args.since or args.until:
            raise ConfigError("--since and --until go with --timeline")
        print(run(list_archive(args.archive, as_json=args.json)))
        return EXIT_OK
    if args.json:
        raise ConfigError("--timeline draws for a terminal; --json lists the sources")
    if not 10 <= args.width <= 1000:
        raise ConfigError(f"--width {args.width}: expected 10 to 1000 columns")
    since = parse_time(args.since, what="--since") if args.since else None
    until = parse_time(args.until, what="--until") if args.until else None
    if since is not None and until is not None and until <= since:
        raise ConfigError("--until must come after --since")
    print(run(draw_timeline(args.archive, since_ns=since, until_ns=until, width=args.width)))
    return EXIT_OK
