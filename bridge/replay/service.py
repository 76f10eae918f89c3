"""`warren replay`: restore a point in time, or a window, of an archive into a broker; or follow it.

Sources replay concurrently, each in archive order on its own connection. Progress is checkpointed
to the state file as the target confirms, so a rerun continues where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bridge.archive import layout
from bridge.archive.clocks import Clock
from bridge.archive.layout import SegmentKey
from bridge.archive.ledger import Gap, source_gaps
from bridge.archive.reader import TimeRange
from bridge.archive.record import Record, Source, SourceKind
from bridge.config import derived_uri, resolve_stream_uri, with_credentials_of, with_vhost
from bridge.errors import ArchiveCorrupt, WarrenError
from bridge.metrics.endpoint import MetricsEndpoint
from bridge.metrics.listen import parse_listen
from bridge.metrics.replay import ReplayMetrics
from bridge.replay import topology
from bridge.replay.dead_letters import Origins
from bridge.replay.outcome import SourceOutcome
from bridge.replay.pacing import Pace, RateLimit
from bridge.replay.progress import Progress, ReplayStatus
from bridge.replay.queue_target import CONFIRM_WINDOW, QueueRoute, replay_queue
from bridge.replay.selection import (
    DrySummary,
    SourcePlan,
    batches_after,
    count_selected,
    dry_run,
    plan_sources,
    refresh,
)
from bridge.replay.state import ReplayState, SourceProgress
from bridge.replay.stream_target import replay_stream
from bridge.service_notify import notifying
from bridge.timespec import format_span
from protocol.errors import ProtocolError
from protocol.stream import FilterValueSource, StreamEndpoint
from sinks import Sink, SinkError, open_sink

log = logging.getLogger("warren.replay")

STOPPING_STATUS = "stopping: finishing what is in flight, saving the replay state"


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
    keep_delivery_count: bool = False
    stream_filter_from: FilterValueSource | None = None
    rate: float | None = None
    by: Clock | None = None  # --by: which of a record's times the window reads (clocks.py)
    to_origin: bool = False  # --to-origin: dead-lettered records back to the queues they died in
    death_reasons: tuple[str, ...] = ()  # --death-reason: only deaths for these
    strip_death: bool = False  # --strip-death: without their death history
    pace: float | None = None  # --pace: the original gaps between messages, divided by this; None: at once
    state: str | None = None
    dry_run: bool = False
    follow: bool = False
    follow_interval: float = 1.0
    skip_corrupt: bool = False
    metrics_listen: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz (bridge/metrics/)

    @property
    def window(self) -> TimeRange:
        return TimeRange(self.since_ns, self.until_ns, self.by)

    @property
    def management_uri(self) -> str:
        if self.target_management_uri:
            return with_credentials_of(self.target_management_uri, self.target)
        return derived_uri(self.target, "http", 15672, keep_vhost=False)


class ReplayFailed(WarrenError):
    """One or more sources could not be replayed completely; the summary says which and why."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def run_replay(options: ReplayOptions, *, raise_on_failure: bool = True) -> list[SourceOutcome]:
    """Replay as `options` say; prints each source's summary. A source that failed raises ReplayFailed
    once all are done, unless `raise_on_failure` is False (the caller reads the outcomes)."""
    async with open_sink(options.archive) as sink:
        plans = await plan_sources(sink, options.sources, options.window)
        if not plans and not options.follow:
            wanted = f" named {', '.join(options.sources)}" if options.sources else ""
            raise WarrenError(f"{sink.url}: the archive holds no source{wanted} to replay")
        state = ReplayState.load(options.state)
        if options.dry_run:
            for summary in [
                await dry_run(
                    sink, p, options.window, _progress_of(state, p).confirmed_seq, keep_copies=options.keep_duplicates
                )
                for p in plans
            ]:
                print(_dry_line(summary))
            return []
        if options.definitions:
            key, definitions = await topology.definitions_at(sink, options.until_ns)
            log.info("restoring definitions", extra={"saved_as": key})
            prepared = topology.prepare(definitions, options.remap, with_users=options.with_users)
            for line in await topology.restore(options.management_uri, prepared, with_users=options.with_users):
                print(line)  # what the target could not take, policy by policy
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        try:
            progress = Progress(None if options.follow else await _estimate(sink, plans, options, state))
            board: dict[Source, SourceOutcome] = {}
            endpoint = await _serve_metrics(options, board, progress)
            try:
                status = ReplayStatus(sink.url, progress, follow=options.follow)
                async with notifying(stopping, status, STOPPING_STATUS):
                    outcomes = await _replay_all(sink, plans, options, state, progress, stopping, board)
            finally:
                if endpoint is not None:
                    await endpoint.stop()
            progress.finish()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    for outcome in outcomes:
        print(outcome.line())
    failed = [o for o in outcomes if o.error]
    if failed and raise_on_failure:
        code = 5 if any(o.error and o.error.startswith("corrupt:") for o in failed) else 3
        raise ReplayFailed(f"{len(failed)} of {len(outcomes)} sources failed; see the summary above", code)
    return outcomes


async def _serve_metrics(
    options: ReplayOptions, board: dict[Source, SourceOutcome], progress: Progress
) -> MetricsEndpoint | None:
    if options.metrics_listen is None:
        return None
    metrics = ReplayMetrics(board, progress)
    endpoint = MetricsEndpoint(
        parse_listen(options.metrics_listen), metrics.registry, metrics.liveness, metrics.readiness
    )
    await endpoint.start()
    return endpoint


async def _replay_all(
    sink: Sink,
    plans: list[SourcePlan],
    options: ReplayOptions,
    state: ReplayState,
    progress: Progress,
    stopping: asyncio.Event,
    board: dict[Source, SourceOutcome],
) -> list[SourceOutcome]:
    """Every source concurrently; in follow mode, also the sources the archive gains meanwhile. Each
    one's outcome is on `board` while it runs (the metrics read it)."""
    tasks = {
        p.source: asyncio.create_task(_replay_source(sink, p, options, state, progress, stopping, board)) for p in plans
    }
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
                        _replay_source(sink, plan, options, state, progress, stopping, board)
                    )
    return [await task for task in tasks.values()]


def _progress_of(state: ReplayState, plan: SourcePlan) -> SourceProgress:
    return state.progress(layout.source_prefix("", plan.source))


def _dry_line(s: DrySummary) -> str:
    span = format_span(s.first_ns, s.last_ns)
    line = f"would replay {s.source}: {s.records} messages, {s.bytes} bytes, captured {span}"
    if s.copies:
        line += f"; would skip {s.copies} duplicates"
    if s.possible_copies:
        line += f"; {s.possible_copies} of the messages are possible duplicates"
    return line


async def _estimate(sink: Sink, plans: list[SourcePlan], options: ReplayOptions, state: ReplayState) -> int | None:
    """What the replay will publish (the progress bar's total): the selection only, after what an
    earlier run already has, without the copies it skips."""
    total = 0
    try:
        for plan in plans:
            after = _progress_of(state, plan).confirmed_seq
            total += await count_selected(sink, plan, options.window, after, keep_copies=options.keep_duplicates)
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
    board: dict[Source, SourceOutcome],
) -> SourceOutcome:
    source = plan.source
    vhost = options.remap.vhost(source.vhost)
    progress_of = _progress_of(state, plan)
    start_after = progress_of.confirmed_seq
    if source.kind is SourceKind.QUEUE:
        target_name = options.remap.queue(source.name)
        where = f"queue {target_name!r}" if not options.via_exchange else "its original exchanges"
        where = "the queues its messages died in" if options.to_origin else where
    else:
        target_name = source.name
        where = f"stream {target_name!r}"
    outcome = board[source] = SourceOutcome(source, f"{where} in vhost {vhost!r}")
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
            origins = (
                Origins(options.remap.queue, options.death_reasons, options.strip_death) if options.to_origin else None
            )
            route = QueueRoute(
                with_vhost(options.target, vhost),
                target_name,
                options.via_exchange,
                dict(options.remap.exchanges),
                to_origin=origins,
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
                keep_delivery_count=options.keep_delivery_count,
            )
        elif options.to_origin:
            outcome.error = "--to-origin sends dead-lettered queue messages back; a stream holds none"
        else:
            stream_uri = (
                with_credentials_of(options.target_stream_uri, options.target)
                if options.target_stream_uri
                else await resolve_stream_uri(options.target, options.management_uri)
            )
            endpoint = StreamEndpoint.parse(stream_uri).with_vhost(vhost)
            outcome.target += f" at {endpoint.redacted()}"
            await replay_stream(
                records, endpoint, target_name, outcome, progress_of, state.save,
                rate=RateLimit(options.rate), on_progress=progress.add, filter_from=options.stream_filter_from,
            )  # fmt: skip
    except ArchiveCorrupt as err:
        outcome.error = f"corrupt: {err}"
    except (WarrenError, ProtocolError, SinkError, OSError) as err:
        outcome.error = str(err)
    outcome.corrupt = plan.corrupt
    outcome.superseded = plan.superseded
    outcome.gaps = await _gaps_in(sink, source, options.window)
    state.save()
    return outcome


async def _gaps_in(sink: Sink, source: Source, window: TimeRange) -> list[Gap]:
    """The ledger's gaps in the window replayed; an unreadable ledger is logged, never a failed replay."""
    try:
        gaps = await source_gaps(sink, "", source)
    except (ArchiveCorrupt, SinkError) as err:
        log.warning("cannot read the gap ledger", extra={"source": str(source), "error": str(err)})
        return []
    return [g for g in gaps if g.overlaps(window.since_ns, window.until_ns)]


async def _records(
    sink: Sink,
    plan: SourcePlan,
    options: ReplayOptions,
    after_seq: int,
    stopping: asyncio.Event,
    progress: Progress,
) -> AsyncIterator[tuple[SegmentKey, list[Record]]]:
    """The source's records after `after_seq`, a block at a time (one at a time when paced, each
    waiting for its moment); in follow mode, then whatever the archiver commits next."""
    last = after_seq
    pace = Pace(options.pace, anchor_ns=options.since_ns) if options.pace else None
    while True:
        async for seg, batch in batches_after(sink, plan, options.window, last, skip_corrupt=options.skip_corrupt):
            if stopping.is_set():
                return
            last = batch[-1].seq
            if options.follow:
                progress.lag_s = max(0.0, (time.time_ns() - batch[0].captured_ns) / 1e9)
            if pace is None:
                yield seg, batch
                continue
            for record in batch:
                await pace.wait_for(record.time_ns)
                if stopping.is_set():
                    return
                yield seg, [record]
        if not options.follow or stopping.is_set():
            return
        progress.lag_s = 0.0 if progress.lag_s is None else progress.lag_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), options.follow_interval)
        if stopping.is_set():
            return
        await refresh(sink, plan, options.window)
