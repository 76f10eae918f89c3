"""`warren archive`: every configured source at once, each on its own connection, until SIGTERM/SIGINT.

Shutdown is ordered: stop consuming, commit the open segments, acknowledge what they hold, close.
Sources are isolated (supervision.py): one the broker refuses is reported and retried on its own
while the others archive; one whose archive cannot be written stops alone (its messages stay in the
broker), and the process exits non-zero once the others have stopped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from dataclasses import replace

from bridge.archive.record import Source, SourceKind
from bridge.archiver.compaction import compact
from bridge.archiver.definitions import DefinitionsRecorder
from bridge.archiver.discovery import Discovery, source_key
from bridge.archiver.lease import Share
from bridge.archiver.queue_source import QueueSource
from bridge.archiver.retention import prune
from bridge.archiver.status import SourceStates
from bridge.archiver.stream_source import StreamSource
from bridge.archiver.supervision import StartupGate, supervise
from bridge.archiver.writer import RollPolicy, SegmentWriter, WriterFactory
from bridge.config import (
    ArchiverConfig,
    ArchiveSettings,
    QueueSourceConfig,
    SourceConfig,
    StreamSourceConfig,
    resolve_stream_uri,
    with_vhost,
)
from bridge.errors import ConfigError, WarrenError, exit_code_for
from bridge.metrics.archiver import ArchiverMetrics, liveness, readiness
from bridge.metrics.backlog import poll_backlog
from bridge.metrics.endpoint import MetricsEndpoint
from bridge.metrics.listen import parse_listen
from bridge.metrics.sink_timing import SinkMetrics
from bridge.service_notify import Notifier, keep_informed
from protocol.errors import ProtocolError
from sinks import Sink, SinkError, open_sink
from sinks.mirror import MirroredSink

log = logging.getLogger("warren.archiver")

PROGRESS_EVERY = 30.0
COMPACT_EVERY = 600.0  # seconds between compactions of the sealed hours
STOPPING_STATUS = "stopping: committing the open segments, acknowledging what they hold"


def _writer_factory(
    sink: Sink, config: ArchiverConfig, source: SourceConfig, metrics: ArchiverMetrics | None
) -> WriterFactory:
    settings = config.archive
    policy = RollPolicy(
        max_bytes=settings.segment_max_bytes,
        max_age=settings.segment_max_age,
        max_idle=settings.segment_idle or None,
    )
    if isinstance(source, QueueSourceConfig):
        archive_source = Source(source.vhost, SourceKind.QUEUE, source.queue)
        if source.ack_mode == "on-confirm" and source.mode != "snapshot":
            # The broker sends nothing past prefetch-count unacknowledged messages, and we acknowledge
            # only durable ones: the writer sizes segments from the window and its commit latency so
            # that deliveries keep flowing while earlier segments are being made durable.
            policy = replace(policy, window=source.prefetch_count)
    else:
        archive_source = Source(source.vhost, SourceKind.STREAM, source.stream)
    observer = metrics.for_source(str(archive_source)) if metrics is not None else None
    return lambda on_durable: SegmentWriter(
        sink, archive_source, policy=policy, on_durable=on_durable, observer=observer
    )


async def run_archiver(
    config: ArchiverConfig, *, snapshot: bool = False, stopping: asyncio.Event | None = None
) -> None:
    """Run until SIGTERM/SIGINT, or until `stopping` is set (for callers embedding the archiver).
    With `metrics-listen`, serve /metrics, /healthz and /readyz meanwhile (bridge/metrics/)."""
    if snapshot:
        if config.patterns:
            raise ConfigError("--snapshot copies the queues it is given by name, not those a src-queue-pattern finds")
        if any(not isinstance(s, QueueSourceConfig) for s in config.sources):
            raise ConfigError("--snapshot copies queues; a stream is non-destructive already: archive it without")
        queues = [s for s in config.sources if isinstance(s, QueueSourceConfig)]
        config = replace(config, sources=tuple(replace(s, mode="snapshot") for s in queues))
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)  # from the start: a stop during start-up is orderly too
    try:
        config = await _resolve_stream_uris(config)
        metrics = ArchiverMetrics() if config.archive.metrics_listen else None
        timed = metrics.sinks if metrics is not None else None
        async with open_archive_sinks(config.archive.sinks, config.archive.write_quorum, timed) as sink:
            await sink.check()
            await _archive_into(sink, config, stopping, snapshot=snapshot, metrics=metrics)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _archive_into(
    sink: Sink, config: ArchiverConfig, stopping: asyncio.Event, *, snapshot: bool, metrics: ArchiverMetrics | None
) -> None:
    reconciling: asyncio.Task[int] | None = None
    if isinstance(sink, MirroredSink):
        reconciling = asyncio.create_task(sink.reconcile())  # a member may have missed writes while we were down
        reconciling.add_done_callback(_log_reconciled)
    sources: list[QueueSource | StreamSource] = []
    snapshot_id = time.time_ns()  # names this run's snapshot records, if any
    try:
        for source_config in config.sources:
            source = _build_source(sink, config, source_config, stopping, metrics, snapshot_id)
            sources.append(source)
            await source.writer.start(recover=False)  # each session finds the archive's end (take_over)
        if snapshot and config.archive.definitions_interval > 0:
            # A snapshot is over in moments: its topology is saved once, before it reads anything.
            keep = config.archive.keep_password_hashes
            await DefinitionsRecorder(
                config.broker.management_uri, sink, 0, stopping, keep_password_hashes=keep
            ).save_once()
        if not stopping.is_set():
            await _run_sources(config, sink, sources, stopping, with_definitions=not snapshot, metrics=metrics)
    finally:
        for source in sources:  # each one's current writer (a conflict may have replaced the first)
            with contextlib.suppress(WarrenError, SinkError):
                await source.writer.close()
            await source.ledger.close()
        if reconciling is not None:
            reconciling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciling


def _build_source(
    sink: Sink,
    config: ArchiverConfig,
    source_config: SourceConfig,
    stopping: asyncio.Event,
    metrics: ArchiverMetrics | None,
    snapshot_id: int = 0,
) -> QueueSource | StreamSource:
    make_writer = _writer_factory(sink, config, source_config, metrics)
    if isinstance(source_config, QueueSourceConfig):
        return QueueSource(source_config, make_writer, stopping, snapshot_id=snapshot_id)
    return StreamSource(source_config, make_writer, stopping)


def open_archive_sinks(uris: tuple[str, ...], write_quorum: int | None, timed: SinkMetrics | None = None) -> Sink:
    """One sink, or several mirrored with a write quorum; with `timed`, each one's requests measured."""
    opened = [open_sink(u) for u in uris]
    if timed is not None:
        opened = [timed.timed(s) for s in opened]
    if len(opened) == 1:
        return opened[0]
    return MirroredSink(opened, write_quorum)


def _log_reconciled(task: asyncio.Task[int]) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.warning("could not compare the sinks at start", extra={"error": str(task.exception())})
    elif task.result():
        log.warning("sinks differ: catching up the objects some lack", extra={"objects": task.result()})


async def _resolve_stream_uris(config: ArchiverConfig) -> ArchiverConfig:
    if all(isinstance(s, QueueSourceConfig) or s.uri for s in config.sources):
        return config
    default = await resolve_stream_uri(config.broker.uri, config.broker.management_uri)
    return replace(
        config,
        sources=tuple(
            s if isinstance(s, QueueSourceConfig) or s.uri else replace(s, uri=with_vhost(default, s.vhost))
            for s in config.sources
        ),
    )


async def _run_sources(
    config: ArchiverConfig,
    sink: Sink,
    sources: list[QueueSource | StreamSource],
    stopping: asyncio.Event,
    *,
    with_definitions: bool,
    metrics: ArchiverMetrics | None,
) -> None:
    # Every configured source refused at start stops the archiver (a wrong host or password, say);
    # not with patterns, whose sources come and go.
    gate = StartupGate(0 if config.patterns else len(sources), stopping)
    states = SourceStates(sources)  # what systemd is told (READY, STATUS), when it runs us
    running = list(sources)  # and those discovery finds as they come (the helpers read it as it changes)
    endpoint = await _serve_metrics(config, running, states, metrics)
    share = _share(config, states) if with_definitions else None  # not for a snapshot: no leases
    tasks = {
        asyncio.create_task(
            supervise(s, stopping, gate, s.config.reconnect_delay, one_shot=_one_shot(s), watch=states, share=share),
            name=s.name,
        ): s
        for s in sources
    }
    helpers = [
        asyncio.create_task(_report_progress(running, stopping)),
        asyncio.create_task(keep_informed(Notifier.from_environment(), stopping, states, STOPPING_STATUS)),
    ]
    if share is not None:
        helpers.append(asyncio.create_task(share.run(stopping), name="share"))
    if metrics is not None:
        helpers.append(
            asyncio.create_task(poll_backlog(config.broker.management_uri, running, metrics.backlog, stopping))
        )
    upkeep = config.archive.compact or config.archive.retention_ns is not None
    if upkeep and with_definitions:  # not in a snapshot run: it is over in moments
        helpers.append(asyncio.create_task(_compact_sealed_hours(sink, running, config.archive, stopping)))
    if with_definitions and config.archive.definitions_interval > 0:
        recorder = DefinitionsRecorder(
            config.broker.management_uri,
            sink,
            config.archive.definitions_interval,
            stopping,
            keep_password_hashes=config.archive.keep_password_hashes,
        )
        helpers.append(asyncio.create_task(recorder.run(), name="definitions"))
    failures: list[tuple[str, BaseException]] = []
    discovering: asyncio.Task[None] | None = None
    if config.patterns:

        async def run_found(found: SourceConfig, stop: asyncio.Event) -> None:
            await _run_discovered(sink, config, found, stop, running, states, metrics, failures, share)

        discovery = Discovery(
            config.broker.management_uri,
            config.patterns,
            config.sources,
            run_found,
            stopping,
            interval=config.archive.discovery_interval,
        )
        discovering = asyncio.create_task(discovery.run(), name="discovery")
    try:
        pending: set[asyncio.Task[None]] = set(tasks) | ({discovering} if discovering else set())
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if task is discovering:
                    if error is not None:
                        failures.append(("discovery", error))
                        log.error("discovery stopped", extra={"error": str(error)})
                    continue
                states.stopped(tasks[task].name, error)
                if error is not None:
                    failures.append((tasks[task].name, error))
                    log.error(
                        "source stopped: nothing more of it is archived; its messages stay in the broker",
                        extra={"source": tasks[task].name, "error": str(error), "others_running": len(pending)},
                    )
    finally:
        stopping.set()
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        if discovering is not None:
            await asyncio.gather(discovering, return_exceptions=True)
        if endpoint is not None:
            await endpoint.stop()
        for s in sources:
            log.info("source stopped", extra={"source": s.name, "archived": s.archived})
    if gate.failure is not None:
        raise gate.failure
    if failures:
        if len(failures) == 1:
            raise failures[0][1]
        raise SourcesFailed(failures)


async def _run_discovered(
    sink: Sink,
    config: ArchiverConfig,
    found: SourceConfig,
    stop: asyncio.Event,
    running: list[QueueSource | StreamSource],
    states: SourceStates,
    metrics: ArchiverMetrics | None,
    failures: list[tuple[str, BaseException]],
    share: Share | None,
) -> None:
    """A source discovery found, run until discovery stops it (its queue is gone, or the archiver
    stops) or it stops for good; either way what it holds is committed first."""
    if isinstance(found, StreamSourceConfig) and not found.uri:
        default = await resolve_stream_uri(config.broker.uri, config.broker.management_uri)
        found = replace(found, uri=with_vhost(default, found.vhost))
    source = _build_source(sink, config, found, stop, metrics)
    running.append(source)
    states.add(source)
    error: BaseException | None = None
    try:
        await source.writer.start(recover=False)  # each session finds the archive's end (take_over)
        await supervise(source, stop, StartupGate(0, stop), found.reconnect_delay, watch=states, share=share)
    except (WarrenError, ProtocolError, SinkError, OSError) as err:
        error = err
        failures.append((source.name, err))
        log.error(
            "source stopped: nothing more of it is archived; its messages stay in the broker",
            extra={"source": source.name, "error": str(err)},
        )
    finally:
        with contextlib.suppress(WarrenError, SinkError):
            await source.writer.close()
        await source.ledger.close()
        log.info("source stopped", extra={"source": source.name, "archived": source.archived})
        if error is None:
            running.remove(source)
            states.remove(source.name)
        else:
            states.stopped(source.name, error)


async def _serve_metrics(
    config: ArchiverConfig,
    sources: list[QueueSource | StreamSource],
    states: SourceStates,
    metrics: ArchiverMetrics | None,
) -> MetricsEndpoint | None:
    if metrics is None or config.archive.metrics_listen is None:
        return None
    metrics.watch(sources, states)
    endpoint = MetricsEndpoint(
        parse_listen(config.archive.metrics_listen),
        metrics.registry,
        lambda: liveness(states),
        lambda: readiness(sources, states),
    )
    await endpoint.start()
    return endpoint


def _share(config: ArchiverConfig, states: SourceStates) -> Share | None:
    """Archivers running this configuration (the same sources and patterns) share its sources."""
    if not config.archive.leases:
        return None
    names = sorted("\0".join(source_key(s)) for s in config.sources)
    names += sorted(f"{p.vhost}\0pattern\0{p.pattern}" for p in config.patterns)
    group = hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest()
    return Share(config.broker.uri, group, lambda: len(states.sources))


def _one_shot(source: QueueSource | StreamSource) -> bool:
    return isinstance(source, QueueSource) and source.config.mode == "snapshot"


class SourcesFailed(WarrenError):
    """Several sources stopped for good; the exit code is the first one's."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        super().__init__(
            f"{len(failures)} sources stopped: " + "; ".join(f"{name}: {error}" for name, error in failures)
        )
        self.exit_code = exit_code_for(failures[0][1])


async def _compact_sealed_hours(
    sink: Sink, running: list[QueueSource | StreamSource], settings: ArchiveSettings, stopping: asyncio.Event
) -> None:
    """Every COMPACT_EVERY seconds, compact the sealed hours of this archiver's own sources, and remove
    those older than the retention, if one is set."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), COMPACT_EVERY)
        if stopping.is_set():
            return
        sources = [s.writer.source for s in running]
        if settings.retention_ns is not None:
            try:
                pruned = await prune(sink, settings.retention_ns, sources=sources, dry_run=False)
            except (SinkError, WarrenError) as err:  # it tries again next time; archiving goes on
                log.warning("retention failed", extra={"error": str(err)})
            else:
                for line in pruned.lines() if pruned.sources else []:
                    log.info("retention", extra={"summary": line})
        if not settings.compact:
            continue
        try:
            report = await compact(sink, sources=sources, max_bytes=settings.compact_max_bytes)
        except (SinkError, WarrenError, ValueError) as err:  # it tries again next time; archiving goes on
            log.warning("compaction failed", extra={"error": str(err)})
            continue
        if report.hours:
            log.info("compaction", extra={"summary": report.line()})


async def _report_progress(sources: list[QueueSource | StreamSource], stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), PROGRESS_EVERY)
        for s in sources:
            log.info(
                "progress",
                extra={"source": s.name, "archived": s.archived, "committed_seq": s.writer.committed_seq},
            )
