"""One stream source: read over the stream protocol, keep each message as the broker stores it (its AMQP
1.0 encoded bytes) with the broker's chunk timestamp, and resume exactly after the archive's last offset.

The archive's checkpoint is the truth for where to resume; the broker-side stored offset (under the
consumer name `warren-archiver`) mirrors it, for operators who look there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from bridge.archive.ledger import Event
from bridge.archiver.lease import Lease
from bridge.archiver.ledger import LedgerNotes
from bridge.archiver.supervision import SourceRefused
from bridge.archiver.writer import Durable, WriterFactory
from bridge.config import StreamOffset, StreamSourceConfig
from bridge.errors import EXIT_AUTH, EXIT_BROKER
from protocol.errors import StreamAuthenticationError, StreamConnectionLost, StreamNotFound
from protocol.stream import Chunk, StartAt, StreamEndpoint, StreamSubscription

log = logging.getLogger("warren.archiver")

SUBSCRIBER = "warren-archiver"


class StreamSourceRefused(SourceRefused):
    """The broker refused the stream source (no such stream): an error at every attempt."""

    exit_code = EXIT_BROKER


class StreamCredentialsRefused(StreamSourceRefused):
    exit_code = EXIT_AUTH


class StreamSource:
    def __init__(self, config: StreamSourceConfig, make_writer: WriterFactory, stopping: asyncio.Event) -> None:
        if config.uri is None:
            raise ValueError("a stream source needs its URI resolved first (resolve_stream_uri)")
        self.config = config
        self.endpoint = StreamEndpoint.parse(config.uri)
        self.writer = make_writer(self._on_durable)
        self.ledger = LedgerNotes(self.writer.sink, self.writer.prefix, self.writer.source)
        self.stopping = stopping
        self.yielding = asyncio.Event()  # ends the session in order, for another archiver (lease.Share)
        self.archived = 0
        self.done = False  # a stream has no end; kept for symmetry with queue sources
        self._last_offset: int | None = None  # the last offset handed to the writer
        self._subscription: StreamSubscription | None = None

    @property
    def name(self) -> str:
        return f"stream {self.config.stream!r} in vhost {self.config.vhost!r}"

    def make_lease(self) -> Lease | None:
        """Whose turn it is to archive this stream, among archivers of one configuration (lease.py)."""
        if self.config.lease_uri is None:
            return None
        return Lease(self.config.lease_uri, "stream", self.config.stream, self.name)

    async def take_over(self) -> None:
        """A session begins: continue after the last offset durable in the archive now (another
        archiver may have archived more since this writer last looked)."""
        await self.writer.flush()
        await self.writer.recover()
        self._last_offset = None

    async def hand_over(self) -> None:
        """Before the lease goes to another archiver: what the writer holds made durable first."""
        await self.writer.flush()

    async def reset_writer(self) -> bool:
        """After a SegmentConflict: a fresh writer; the stream keeps every offset, so nothing is lost."""
        self.writer = await self.writer.renewed()
        self._last_offset = None
        return True

    def start_from(self) -> StartAt:
        """Right after what the archive (or this process's writer) already holds, else the configured offset."""
        last = self._last_offset if self._last_offset is not None else self.writer.committed_offset
        if last is not None:
            return StartAt.after(last)
        spec: StreamOffset = self.config.offset
        return StartAt(spec.kind, spec.value)

    async def run_session(self, consuming: Callable[[], None]) -> None:
        """One subscription's life; a lost connection raises `StreamConnectionLost` (retried by the
        supervisor), a refusal `StreamSourceRefused`."""
        try:
            await self._run_session(consuming)
        except StreamAuthenticationError as err:
            raise StreamCredentialsRefused(f"{self.name}: the broker refused the credentials") from err
        except StreamNotFound as err:
            raise StreamSourceRefused(f"{self.name}: no such stream") from err

    async def _run_session(self, consuming: Callable[[], None]) -> None:
        lost = asyncio.Event()

        def on_close(reason: str) -> None:
            log.warning("stream connection closed", extra={"source": self.name, "reason": reason})
            lost.set()

        start = self.start_from()
        subscription = await self.endpoint.subscribe(
            self.config.stream,
            self._on_chunk,
            start=start,
            subscriber_name=SUBSCRIBER,
            connection_name=f"warren archiver: {self.config.stream}",
            initial_credit=10,
            on_close=on_close,
        )
        self._subscription = subscription
        checking: asyncio.Future[None] | None = None
        if start.kind == "offset" and start.value is not None and self._has_archived():
            # Beside the session, not before it: the probe takes a connection's set-up and tear-down.
            checking = asyncio.ensure_future(self._check_retention(start.value))
            checking.add_done_callback(_retention_unchecked)
        try:
            consuming()
            log.info("archiving", extra={"source": self.name, "from_offset": start.value, "spec": start.kind})
            stop = asyncio.ensure_future(self.stopping.wait())
            handed_on = asyncio.ensure_future(self.yielding.wait())
            gone = asyncio.ensure_future(lost.wait())
            failed = asyncio.ensure_future(self.writer.failed.wait())
            try:
                await asyncio.wait({stop, handed_on, gone, failed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in (stop, handed_on, gone, failed):
                    wait.cancel()
            self.writer.raise_if_failed()
            if lost.is_set() and not self.stopping.is_set():
                raise StreamConnectionLost("the connection closed", self.endpoint.redacted())
        finally:
            self._subscription = None
            if checking is not None:
                checking.cancel()
            await subscription.close()

    def _on_chunk(self, chunk: Chunk, chunk_ts_ms: int) -> Awaitable[None] | None:
        # A plain function: the stream client awaits only what it gets back, so the usual case costs no coroutine.
        if self.writer.error is not None:
            return None  # the session is ending; we resume after the archive's last offset
        last = self._last_offset
        if last is not None and chunk[0][0] <= last:
            chunk = [entry for entry in chunk if entry[0] > last]  # delivered again after a resubscription
            if not chunk:
                return None
        self.writer.append_stream_chunk(chunk, chunk_ts_ms)
        self._last_offset = chunk[-1][0]
        self.archived += len(chunk)
        if not self.writer.has_room:
            return self.writer.wait_for_room()  # holds the stream client's reader, so credit stops flowing
        return None

    def _has_archived(self) -> bool:
        return self._last_offset is not None or self.writer.committed_offset is not None

    async def _check_retention(self, wanted: int) -> None:
        """Resuming at `wanted`: if the stream's retention removed it meanwhile, the offsets up to
        the oldest one left never reach the archive, and that is said aloud (log and gap ledger). The
        offsets in between include some the broker spent on offset tracking, so "up to" that many messages."""
        first = await self.endpoint.first_offset(
            self.config.stream, connection_name=f"warren archiver: {self.config.stream}"
        )
        if first is None:
            log.warning(
                "could not read the stream's oldest offset in time: offsets its retention removed, if any, go unnoted",
                extra={"source": self.name, "from_offset": wanted},
            )
            return
        if first <= wanted:
            return
        log.error(
            "stream offsets were removed by the stream's retention before they were archived",
            extra={"source": self.name, "from_offset": wanted, "to_offset": first - 1, "at_most": first - wanted},
        )
        self.ledger.note(Event.SKIPPED, from_offset=wanted, to_offset=first - 1)

    def _on_durable(self, durable: Durable) -> None:
        subscription = self._subscription
        if subscription is not None and durable.last_offset is not None:
            task = asyncio.ensure_future(subscription.store_offset(durable.last_offset))
            task.add_done_callback(_ignore_failure)


def _retention_unchecked(task: asyncio.Future[None]) -> None:
    # Losing the probe's connection loses nothing: the session's own failure, if any, is what counts.
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not check the stream's retention", extra={"reason": str(task.exception())})


def _ignore_failure(task: asyncio.Future[None]) -> None:
    # The broker-side offset only mirrors the archive's checkpoint; failing to store it loses nothing.
    if not task.cancelled() and task.exception() is not None:
        log.debug("could not store the offset on the broker", extra={"reason": str(task.exception())})
