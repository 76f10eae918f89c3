"""`warren archive`: every configured source at once, each on its own connection, until SIGTERM/SIGINT.

Shutdown is ordered: stop consuming, commit the open segments, acknowledge what they hold, close.
One source failing for good (the archive cannot be written) stops them all, in the same order, and
the process exits non-zero; messages not yet durable stay in the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import replace

from bridge.archive.record import Source, SourceKind
from bridge.archive.writer import RollPolicy, SegmentWriter
from bridge.archiver.definitions import DefinitionsRecorder
from bridge.archiver.queue_source import QueueSource
from bridge.archiver.stream_source import StreamSource
from bridge.config import ArchiverConfig, QueueSourceConfig, SourceConfig, resolve_stream_uri, with_vhost
from bridge.errors import ConfigError
from sinks import Sink, open_sink
from sinks.mirror import MirroredSink

log = logging.getLogger("warren.archiver")

PROGRESS_EVERY = 30.0


def _writer(sink: Sink, config: ArchiverConfig, source: SourceConfig) -> SegmentWriter:
    policy = RollPolicy(max_bytes=config.archive.segment_max_bytes, max_age=config.archive.segment_max_age)
    if isinstance(source, QueueSourceConfig):
        archive_source = Source(source.vhost, SourceKind.QUEUE, source.queue)
        if source.ack_mode == "on-confirm" and source.mode != "snapshot":
            # The broker sends nothing past prefetch-count unacknowledged messages, and we acknowledge
            # only durable ones: segments of a quarter of the window, uploaded several at once, keep
            # deliveries flowing while earlier segments are being made durable.
            policy = replace(policy, max_records=max(1, source.prefetch_count // 4))
    else:
        archive_source = Source(source.vhost, SourceKind.STREAM, source.stream)
    return SegmentWriter(sink, archive_source, policy=policy)


async def run_archiver(
    config: ArchiverConfig, *, snapshot: bool = False, stopping: asyncio.Event | None = None
) -> None:
    """Run until SIGTERM/SIGINT, or until `stopping` is set (for callers embedding the archiver)."""
    if snapshot:
        if any(not isinstance(s, QueueSourceConfig) for s in config.sources):
            raise ConfigError("--snapshot copies queues; a stream is non-destructive already: archive it without")
        config = replace(config, sources=tuple(replace(s, mode="snapshot") for s in config.sources))
    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)  # from the start: a stop during start-up is orderly too
    try:
        config = await _resolve_stream_uris(config)
        async with open_archive_sinks(config.archive.sinks, config.archive.write_quorum) as sink:
            await sink.check()
            await _archive_into(sink, config, stopping, snapshot=snapshot)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _archive_into(sink: Sink, config: ArchiverConfig, stopping: asyncio.Event, *, snapshot: bool) -> None:
    reconciling: asyncio.Task[int] | None = None
    if isinstance(sink, MirroredSink):
        reconciling = asyncio.create_task(sink.reconcile())  # a member may have missed writes while we were down
        reconciling.add_done_callback(_log_reconciled)
    writers: list[SegmentWriter] = []
    try:
        sources: list[QueueSource | StreamSource] = []
        for source_config in config.sources:
            writer = _writer(sink, config, source_config)
            await writer.start()
            writers.append(writer)
            if isinstance(source_config, QueueSourceConfig):
                sources.append(QueueSource(source_config, writer, stopping))
            else:
                sources.append(StreamSource(source_config, writer, stopping))
        if not stopping.is_set():
            await _run_sources(config, sink, sources, stopping, with_definitions=not snapshot)
    finally:
        for writer in writers:
            with contextlib.suppress(Exception):
                await writer.close()
        if reconciling is not None:
            reconciling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciling


def open_archive_sinks(uris: tuple[str, ...], write_quorum: int | None) -> Sink:
    """One sink, or several mirrored with a write quorum."""
    if len(uris) == 1:
        return open_sink(uris[0])
    return MirroredSink([open_sink(u) for u in uris], write_quorum)


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
) -> None:
    tasks = {asyncio.create_task(s.run(), name=s.name): s for s in sources}
    helpers = [asyncio.create_task(_report_progress(sources, stopping))]
    if with_definitions and config.archive.definitions_interval > 0:
        recorder = DefinitionsRecorder(
            config.broker.management_uri, sink, config.archive.definitions_interval, stopping
        )
        helpers.append(asyncio.create_task(recorder.run(), name="definitions"))
    pending = set(tasks)
    failure: BaseException | None = None
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None and failure is None:
                    failure = task.exception()
                    log.error("source failed; stopping all sources", extra={"source": tasks[task].name})
                    stopping.set()  # the others stop in order: commit, acknowledge, close
    finally:
        stopping.set()
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        for s in sources:
            log.info("source stopped", extra={"source": s.name, "archived": s.archived})
    if failure is not None:
        raise failure


async def _report_progress(sources: list[QueueSource | StreamSource], stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), PROGRESS_EVERY)
        for s in sources:
            log.info(
                "progress",
                extra={"source": s.name, "archived": s.archived, "committed_seq": s.writer.committed_seq},
            )
