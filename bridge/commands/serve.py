"""`warren serve`: the archive's timeline as a small web page on loopback, with a time picker that
prints the `warren replay --at ...` command for the point chosen.

The page (serve_page.html, no outside resources) draws what `/api/timeline` returns: the same density
per source and gap-ledger marks as `warren ls --timeline`, from the footers and the ledger alone. Both
are read again at most every CACHE_SECONDS, so a page left open follows a live archive without reading
object storage on every request.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import logging
import signal
import time
from dataclasses import dataclass

from aiohttp import web

from bridge.archive.ledger import Gap, archive_gaps
from bridge.archive.reader import read_footers
from bridge.archive.record import Source
from bridge.archive.segment import SegmentIndex
from bridge.archive.timeline import DEFAULT_WIDTH, Timeline, timeline
from bridge.errors import EXIT_OK, ConfigError
from bridge.metrics.listen import ListenAddress, is_loopback, parse_listen, start_app
from bridge.timespec import format_time, parse_time
from protocol.loop import run
from sinks import Sink, open_sink, redact_url

log = logging.getLogger("warren.serve")

DEFAULT_LISTEN = "127.0.0.1:9430"
CACHE_SECONDS = 30.0
MAX_WIDTH = 1000
PAGE = importlib.resources.files("bridge.commands").joinpath("serve_page.html")


@dataclass
class ArchiveView:
    """The footers and gaps of one archive, read again once they are CACHE_SECONDS old."""

    sink: Sink
    read_at: float = 0.0
    indexes: list[SegmentIndex] | None = None
    gaps: dict[Source, list[Gap]] | None = None

    async def current(self) -> tuple[list[SegmentIndex], dict[Source, list[Gap]]]:
        if self.indexes is None or self.gaps is None or time.monotonic() - self.read_at > CACHE_SECONDS:
            indexes = await read_footers(self.sink)
            self.gaps = await archive_gaps(self.sink, indexes)
            self.indexes, self.read_at = indexes, time.monotonic()
        return self.indexes, self.gaps


def timeline_json(line: Timeline, archive: str) -> dict[str, object]:
    """What the page draws. Times go as ms since the epoch (a JavaScript number holds ns only roughly)
    and as RFC 3339 text."""
    sources = []
    for source in sorted(line.counts):
        first, last = line.spans[source]
        sources.append(
            {
                "label": f"{source.vhost} {source.kind} {source.name}",
                "vhost": source.vhost,
                "kind": str(source.kind),
                "name": source.name,
                "counts": [round(c, 3) for c in line.counts[source]],
                "records": round(sum(line.counts[source])),
                "estimated": source in line.estimated,
                "first_ms": first / 1e6,
                "last_ms": last / 1e6,
                "gaps": [_gap_json(g) for g in line.gaps.get(source, [])],
            }
        )
    return {
        "archive": archive,
        "start_ms": line.start_ns / 1e6,
        "end_ms": line.end_ns / 1e6,
        "start": format_time(line.start_ns),
        "end": format_time(line.end_ns),
        "width": line.width,
        "sources": sources,
    }


def _gap_json(gap: Gap) -> dict[str, object]:
    return {
        "start_ms": gap.start_ns / 1e6,
        "end_ms": gap.end_ns / 1e6 if gap.end_ns is not None else None,
        "lost": gap.lost,
        "line": gap.line(),
    }


def make_app(view: ArchiveView, archive: str) -> web.Application:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html", charset="utf-8")

    async def api_timeline(request: web.Request) -> web.Response:
        try:
            since = _time(request, "since")
            until = _time(request, "until")
            width = int(request.query.get("width", DEFAULT_WIDTH * 2))
            if not 10 <= width <= MAX_WIDTH:
                raise ConfigError(f"width {width}: expected 10 to {MAX_WIDTH} columns")
        except (ConfigError, ValueError) as err:
            return web.json_response({"error": str(err)}, status=400)
        indexes, gaps = await view.current()
        line = timeline(indexes, since_ns=since, until_ns=until, width=width, gaps=gaps)
        return web.json_response(timeline_json(line, archive))

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/api/timeline", api_timeline)
    return app


def _time(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    return parse_time(text, what=name) if text else None


async def serve(uri: str, address: ListenAddress, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    async with open_sink(uri) as sink:
        archive = redact_url(uri)
        runner, port = await start_app(make_app(ArchiveView(sink), archive), address, "--listen")
        try:
            if not is_loopback(address.host):
                log.warning("the archive's page is served beyond this host", extra={"listen": str(address)})
            print(f"serving {archive} on http://{ListenAddress(address.host, port)}/ (Ctrl-C stops)", flush=True)
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopping.set)
            if ready is not None:
                ready.set()
            await stopping.wait()
        finally:
            await runner.cleanup()


EXAMPLES = (
    "examples:\n"
    "  warren serve file:///var/lib/warren                 # then open http://127.0.0.1:9430/\n"
    "  warren serve s3://archive-bucket/warren?region=eu-west-1 --listen 127.0.0.1:8080"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE", help="archive URI (file:///var/lib/warren, s3://...) or path")
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=DEFAULT_LISTEN,
        help=f"where to serve the page (default {DEFAULT_LISTEN}; a bare port listens on loopback)",
    )


def from_args(args: argparse.Namespace) -> int:
    run(serve(args.archive, parse_listen(args.listen, "--listen")))
    return EXIT_OK
