"""`warren sync SRC DST`: copy what one archive lacks from another (migration, repairing a sink).

Segments and definitions are immutable: a missing one is copied, one present on both with another
size is reported and left alone. A checkpoint is copied when the source's is ahead, and only after
the segments it covers, so the destination never claims more than it holds.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.archive import layout
from bridge.archive.checkpoint import Checkpoint
from bridge.errors import EXIT_CHECK_FAILED, EXIT_OK
from protocol.loop import run
from sinks import ObjectNotFound, Sink, open_sink
from sinks.base import RESERVED_PREFIX

PARALLEL = 8


@dataclass
class SyncReport:
    copied: int = 0
    bytes: int = 0
    present: int = 0
    checkpoints: int = 0
    conflicts: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"copied {self.copied} objects ({self.bytes} bytes) and {self.checkpoints} checkpoints; "
            f"{self.present} already present"
        )
        return text + "".join(f"\nCONFLICT {c}" for c in self.conflicts)


async def sync_archives(src: Sink, dst: Sink, out: Callable[[str], None] = print) -> SyncReport:
    report = SyncReport()
    have = {info.key: info.size async for info in dst.list("")}
    checkpoints: list[str] = []
    to_copy: list[str] = []
    async for info in src.list(""):
        if info.key.startswith(RESERVED_PREFIX):
            continue
        if info.key.rsplit("/", 1)[-1] == layout.CHECKPOINT:
            checkpoints.append(info.key)
        elif info.key not in have:
            to_copy.append(info.key)
        elif have[info.key] != info.size:
            report.conflicts.append(f"{info.key}: {info.size} bytes in {src.url}, {have[info.key]} in {dst.url}")
        else:
            report.present += 1
    limit = asyncio.Semaphore(PARALLEL)

    async def copy(key: str) -> None:
        async with limit:
            data = await src.get(key)
            await dst.put(key, data, if_absent=True)
            report.copied += 1
            report.bytes += len(data)

    await asyncio.gather(*(copy(key) for key in to_copy))
    for key in checkpoints:
        theirs = Checkpoint.decode(await src.get(key), key)
        try:
            ours: Checkpoint | None = Checkpoint.decode(await dst.get(key), key)
        except ObjectNotFound:
            ours = None
        if ours is None or ours.last_seq < theirs.last_seq:
            await dst.put(key, theirs.encode())
            report.checkpoints += 1
    out(report.line())
    return report


async def sync_uris(src_uri: str, dst_uri: str) -> bool:
    """True when the destination now holds everything the source does."""
    async with open_sink(src_uri) as src, open_sink(dst_uri) as dst:
        await dst.check()
        report = await sync_archives(src, dst)
    return not report.conflicts


EXAMPLES = "examples:\n  warren sync s3://bucket/warren gs://other-bucket/warren     # copy what the second lacks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("source", metavar="SRC_ARCHIVE", help="archive URI or path to copy from")
    parser.add_argument("destination", metavar="DST_ARCHIVE", help="archive URI or path to copy into")


def from_args(args: argparse.Namespace) -> int:
    return EXIT_OK if run(sync_uris(args.source, args.destination)) else EXIT_CHECK_FAILED
