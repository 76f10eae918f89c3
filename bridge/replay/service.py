"""`warren replay`: restore a point in time, or a window, of an archive into a broker; or follow it.

Sources replay concurrently, each in archive order on its own connection. Progress is checkpointed
to the state file as the target confirms, so a rerun continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bridge.archive import layout
from bridge.archive.layout import SegmentKey
from bridge.archive.reader import TimeRange, read_index
from bridge.archive.record import Record, SourceKind
from bridge.config import derived_uri, resolve_stream_uri, with_vhost
from bridge.errors import ArchiveCorrupt, ConfigError, WarrenError
from bridge.replay import topology
from bridge.replay.outcome import SourceOutcome
from bridge.replay.pacing import RateLimit
from bridge.replay.progress import Progress
from bridge.replay.queue_target import CONFIRM_WINDOW, QueueRoute, replay_queue
from bridge.replay.selection import DrySummary, SourcePlan, dry_run, plan_sources, records_after, refresh
from bridge.replay.state import ReplayState, SourceProgress
from bridge.replay.stream_target import replay_stream
from bridge.timespec import format_time, parse_time
from protocol.errors import ProtocolError
from protocol.stream import StreamEndpoint
from sinks import Sink, SinkError, open_sink

log = logging.getLogger("warren.replay")


@dataclass(frozen=True)
class ReplayOptions:
    archive: str
    target: str
    since_ns: int | None = None
    until_ns: int | None = None
    sources: tuple[str, ...] = ()
    definitions: bool = False
    with_users: bool = False
    target_management_uri: str | None = None
    target_stream_uri: str | None = None
    via_exchange: bool = False
    remap: topology.Remap = field(default_factory=topology.Remap)
    keep_duplicates: bool = False
    rate: float | None = None
    state: str | None = None
    dry_run: bool = False
    follow: bool = False
    follow_interval: float = 1.0
    skip_corrupt: bool = False

    @property
    def window(self) -> TimeRange:
        return TimeRange(self.since_ns, self.until_ns)

    @property
    def management_uri(self) -> str:
        return self.target_management_uri or derived_uri(self.target, "http", 15672, keep_vhost=False)


class ReplayFailed(WarrenError):
    """One or more sources could not be replayed completely; the summary says which and why."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def run_replay(options: ReplayOptions) -> list[SourceOutcome]:
    async with open_sink(options.archive) as sink:
        plans = await plan_sources(sink, options.sources, options.window)
        if not plans and not options.follow:
            wanted = f" named {', '.join(options.sources)}" if options.sources else ""
            raise WarrenError(f"{sink.url}: the archive holds no source{wanted} to replay")
        state = ReplayState.load(options.state)
        if options.dry_run:
            for summary in [
                await dry_run(sink, p, options.window, _progress_of(state, p).confirmed_seq) for p in plans
            ]:
                print(_dry_line(summary))
            return []
        if options.definitions:
            key, definitions = await topology.definitions_at(sink, options.until_ns)
            log.info("restoring definitions", extra={"saved_as": key})
            prepared = topology.prepare(definitions, options.remap, with_users=options.with_users)
            await topology.restore(options.management_uri, prepared, with_users=options.with_users)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            progress = Progress(None if options.follow else await _estimate(sink, plans, options.window))
            outcomes = await _replay_all(sink, plans, options, state, progress, stopping)
            progress.finish()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    for outcome in outcomes:
        print(outcome.line())
    failed = [o for o in outcomes if o.error]
    if failed:
        code = 5 if any(o.error and o.error.startswith("corrupt:") for o in failed) else 3
        raise ReplayFailed(f"{len(failed)} of {len(outcomes)} sources failed; see the summary above", code)
    return outcomes


async def _replay_all(
    sink: Sink,
    plans: list[SourcePlan],
    options: ReplayOptions,
    state: ReplayState,
    progress: Progress,
    stopping: asyncio.Event,
) -> list[SourceOutcome]:
    """Every source concurrently; in follow mode, also the sources the archive gains meanwhile."""
    tasks = {p.source: asyncio.create_task(_replay_source(sink, p, options, state, progress, stopping)) for p in plans}
    if options.follow:
        if not tasks:
            log.info("waiting for the archive to hold a source", extra={"archive": sink.url})
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), options.follow_interval)
            if stopping.is_set():
                break
            try:
                found = await plan_sources(sink, options.sources, options.window)
            except SinkError as err:
                log.warning("cannot list the archive", extra={"reason": str(err)})
                continue
            for plan in found:
                if plan.source not in tasks:
                    log.info("following a new source", extra={"source": str(plan.source)})
                    tasks[plan.source] = asyncio.create_task(
                        _replay_source(sink, plan, options, state, progress, stopping)
                    )
    return [await task for task in tasks.values()]


def _progress_of(state: ReplayState, plan: SourcePlan) -> SourceProgress:
    return state.progress(layout.source_prefix("", plan.source))


def _dry_line(s: DrySummary) -> str:
    span = f"{format_time(s.first_ns)} .. {format_time(s.last_ns)}" if s.first_ns is not None else "-"
    return f"would replay {s.source}: {s.records} messages, {s.bytes} bytes, captured {span}"


async def _estimate(sink: Sink, plans: list[SourcePlan], window: TimeRange) -> int | None:
    """Records in the segments the window touches: the bar's total (exact when whole segments are in)."""
    total = 0
    try:
        for plan in plans:
            for seg in plan.segments:
                index = await read_index(sink, seg)
                if window.overlaps(index):
                    total += index.records
    except (ArchiveCorrupt, SinkError):
        return None  # the replay itself reports it, per source
    return total


async def _replay_source(
    sink: Sink,
    plan: SourcePlan,
    options: ReplayOptions,
    state: ReplayState,
    progress: Progress,
    stopping: asyncio.Event,
) -> SourceOutcome:
    source = plan.source
    vhost = options.remap.vhost(source.vhost)
    progress_of = _progress_of(state, plan)
    start_after = progress_of.confirmed_seq
    if source.kind is SourceKind.QUEUE:
        target_name = options.remap.queue(source.name)
        where = f"queue {target_name!r}" if not options.via_exchange else "its original exchanges"
    else:
        target_name = source.name
        where = f"stream {target_name!r}"
    outcome = SourceOutcome(source, f"{where} in vhost {vhost!r}")
    # Only the unconfirmed window can have reached the target unrecorded; the written-ahead mark bounds it too.
    outcome.in_doubt = max(0, min(progress_of.published_seq - progress_of.confirmed_seq, CONFIRM_WINDOW))
    outcome.already_confirmed = start_after
    if start_after:
        log.info(
            "resuming",
            extra={"source": str(source), "after_seq": start_after, "in_doubt": outcome.in_doubt},
        )
    records = _records(sink, plan, options, start_after, stopping, progress)
    try:
        if source.kind is SourceKind.QUEUE:
            route = QueueRoute(
                with_vhost(options.target, vhost), target_name, options.via_exchange, dict(options.remap.exchanges)
            )
            await replay_queue(
                records,
                route,
                outcome,
                progress_of,
                state.save,
                keep_duplicates=options.keep_duplicates,
                rate=RateLimit(options.rate),
                on_progress=progress.add,
            )
        else:
            stream_uri = options.target_stream_uri or await resolve_stream_uri(options.target, options.management_uri)
            endpoint = StreamEndpoint.parse(stream_uri).with_vhost(vhost)
            outcome.target += f" at {endpoint.redacted()}"
            await replay_stream(
                records, endpoint, target_name, outcome, progress_of, state.save,
                rate=RateLimit(options.rate), on_progress=progress.add,
            )  # fmt: skip
    except ArchiveCorrupt as err:
        outcome.error = f"corrupt: {err}"
    except (WarrenError, ProtocolError, SinkError, OSError) as err:
        outcome.error = str(err)
    except Exception as err:  # rstream's own errors
        outcome.error = f"{type(err).__name__}: {err}"
    outcome.corrupt = plan.corrupt
    state.save()
    return outcome


async def _records(
    sink: Sink,
    plan: SourcePlan,
    options: ReplayOptions,
    after_seq: int,
    stopping: asyncio.Event,
    progress: Progress,
) -> AsyncIterator[tuple[SegmentKey, Record]]:
    """The source's records after `after_seq`; in follow mode, then whatever the archiver commits next."""
    last = after_seq
    while True:
        async for seg, record in records_after(sink, plan, options.window, last, skip_corrupt=options.skip_corrupt):
            if stopping.is_set():
                return
            last = record.seq
            if options.follow:
                progress.lag_s = max(0.0, (time.time_ns() - record.captured_ns) / 1e9)
            yield seg, record
        if not options.follow or stopping.is_set():
            return
        progress.lag_s = 0.0 if progress.lag_s is None else progress.lag_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), options.follow_interval)
        if stopping.is_set():
            return
        await refresh(sink, plan, options.window)


def parse_mapping(pairs: list[str], flag: str) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"{flag} {pair!r}: expected OLD=NEW")
        mapping[old] = new
    return mapping


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    """The command line's `replay` arguments, checked, as options."""
    until = args.at or args.until
    if args.follow and until:
        raise ConfigError("--follow replays what the archiver commits next: it takes --since, not --at or --until")
    return ReplayOptions(
        archive=args.archive,
        target=args.target,
        since_ns=parse_time(args.since, what="--since") if args.since else None,
        until_ns=parse_time(until, what="--at" if args.at else "--until") if until else None,
        sources=tuple(args.source),
        definitions=args.definitions,
        with_users=args.with_users,
        target_management_uri=args.target_management_uri,
        target_stream_uri=args.target_stream_uri,
        via_exchange=args.via_exchange,
        remap=topology.Remap(
            parse_mapping(args.map_vhost, "--map-vhost"),
            parse_mapping(args.map_queue, "--map-queue"),
            parse_mapping(args.map_exchange, "--map-exchange"),
        ),
        keep_duplicates=args.keep_duplicates,
        rate=args.rate,
        state=args.state,
        dry_run=args.dry_run,
        follow=args.follow,
        skip_corrupt=args.skip_corrupt,
    )
