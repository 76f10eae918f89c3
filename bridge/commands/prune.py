"""`warren prune`: remove the sealed hours older than a retention, whole partitions only; a dry run
unless --apply."""

from __future__ import annotations

import argparse

from bridge.errors import EXIT_OK
from protocol.loop import run

EXAMPLES = (
    "examples:\n"
    "  warren prune file:///var/lib/warren --older-than 90d            # what would go, nothing removed\n"
    "  warren prune file:///var/lib/warren --older-than 90d --apply\n"
    "  warren prune s3://archive-bucket/warren --older-than 2w --source orders --apply"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE", help="archive URI (file:///var/lib/warren, s3://...) or path")
    parser.add_argument("--older-than", metavar="AGE", required=True, help="90d, 12h, 2w: hours that ended before")
    parser.add_argument("--source", metavar="NAME", action="append", default=[], help="only this queue or stream")
    parser.add_argument("--apply", action="store_true", help="remove them (without it: only say what would go)")


def from_args(args: argparse.Namespace) -> int:
    from bridge.archiver.retention import prune
    from bridge.timespec import parse_duration
    from sinks import open_sink

    older_than = parse_duration(args.older_than, what="--older-than")

    async def go() -> list[str]:
        async with open_sink(args.archive) as sink:
            sources = None
            if args.source:
                from bridge.archive.reader import list_segments

                sources = sorted({seg.source for seg in await list_segments(sink) if seg.source.name in args.source})
            report = await prune(sink, older_than, sources=sources, dry_run=not args.apply)
        return report.lines()

    for line in run(go()):
        print(line)
    return EXIT_OK
