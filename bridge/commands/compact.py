"""`warren compact`: merge the small segments of every sealed hour into a few large ones (the archiver
does it by itself every few minutes; this is for archives written before, or by an archiver that
does not)."""

from __future__ import annotations

import argparse

from bridge.errors import EXIT_OK
from protocol.loop import run

EXAMPLES = "examples:\n  warren compact file:///var/lib/warren     # the archiver does this itself every 10 minutes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE", help="archive URI or path")
    parser.add_argument("--source", metavar="NAME", action="append", default=[], help="only this queue or stream")
    parser.add_argument(
        "--max-bytes", metavar="N", type=int, default=64 * 1024 * 1024, help="largest compacted segment (64 MiB)"
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would be merged; change nothing")


def from_args(args: argparse.Namespace) -> int:
    print(run(_compact(args.archive, args.source, args.max_bytes, args.dry_run)))
    return EXIT_OK


async def _compact(uri: str, names: list[str], max_bytes: int, dry_run: bool) -> str:
    from bridge.archive.reader import list_segments
    from bridge.archiver.compaction import compact
    from sinks import open_sink

    async with open_sink(uri) as sink:
        sources = None
        if names:
            sources = sorted({seg.source for seg in await list_segments(sink) if seg.source.name in names})
        report = await compact(sink, sources=sources, max_bytes=max_bytes, dry_run=dry_run)
    return ("would have " if dry_run else "") + report.line()
