"""One stream source: read with rstream, keep each message as the broker stores it (its AMQP 1.0
encoded bytes) with the broker's chunk timestamp, and resume exactly after the archive's last offset.

The archive's checkpoint is the truth for where to resume; the broker-side stored offset (under the
consumer name `warren-archiver`) mirrors it, for operators who look there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from rstream import Consumer, ConsumerOffsetSpecification, OffsetType
from rstream.consumer import MessageContext
from rstream.exceptions import AuthenticationFailure, StreamDoesNotExist

from bridge.archive.writer import Durable, SegmentWriter
from bridge.archiver.backoff import Backoff
from bridge.config import StreamOffset, StreamSourceConfig
from bridge.errors import EXIT_AUTH, EXIT_BROKER, WarrenError
from protocol.errors import InvalidURI
from protocol.stream import StreamEndpoint

log = logging.getLogger("warren.archiver")

SUBSCRIBER = "warren-archiver"
_OFFSET_TYPES = {
    "first": OffsetType.FIRST,
    "last": OffsetType.LAST,
    "next": OffsetType.NEXT,
    "offset": OffsetType.OFFSET,
    "timestamp": OffsetType.TIMESTAMP,
}


class StreamSourceError(WarrenError):
    exit_code = EXIT_BROKER


class StreamAuthenticationError(StreamSourceError):
    exit_code = EXIT_AUTH


class StreamSource:
    def __init__(self, config: StreamSourceConfig, writer: SegmentWriter, stopping: asyncio.Event) -> None:
        if config.uri is None:
            raise ValueError("a stream source needs its URI resolved first (resolve_stream_uri)")
        self.config = config
        self.endpoint = StreamEndpoint.parse(config.uri)
        self.writer = writer
        self.stopping = stopping
        self.archived = 0
        self.done = False  # a stream has no end; kept for symmetry with queue sources
        self._last_offset: int | None = None  # the last offset handed to the writer
        self._consumer: Consumer | None = None
        self._connected_once = False
        writer.on_durable = self._on_durable

    @property
    def name(self) -> str:
        return f"stream {self.config.stream!r} in vhost {self.config.vhost!r}"

    def start_from(self) -> ConsumerOffsetSpecification:
        """Right after what the archive (or this process's writer) already holds, else the configured offset."""
        last = self._last_offset if self._last_offset is not None else self.writer.committed_offset
        if last is not None:
            return ConsumerOffsetSpecification(OffsetType.OFFSET, last + 1)
        spec: StreamOffset = self.config.offset
        return ConsumerOffsetSpecification(_OFFSET_TYPES[spec.kind], spec.value)

    async def run(self) -> None:
        backoff = Backoff(self.config.reconnect_delay)
        while not self.stopping.is_set():
            try:
                await self._run_session(backoff)
            except AuthenticationFailure as err:
                if not self._connected_once:
                    raise StreamAuthenticationError(f"{self.name}: the broker refused the credentials") from err
                log.error("stream broker refused the archiver", extra={"source": self.name})
            except StreamDoesNotExist as err:
                if not self._connected_once:
                    raise StreamSourceError(f"{self.name}: no such stream") from err
                log.warning("stream unavailable", extra={"source": self.name})
            except (TimeoutError, OSError, ConnectionError) as err:
                log.warning("stream connection lost", extra={"source": self.name, "reason": str(err) or repr(err)})
            except Exception as err:  # rstream raises a variety of its own errors on a lost connection
                if isinstance(err, (WarrenError, InvalidURI)):
                    raise
                log.warning("stream connection lost", extra={"source": self.name, "reason": repr(err)})
            if self.stopping.is_set():
                break
            delay = backoff.next_delay()
            log.info("reconnecting", extra={"source": self.name, "in_seconds": round(delay, 1)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _run_session(self, backoff: Backoff) -> None:
        lost = asyncio.Event()

        async def on_close(info: Any) -> None:
            log.warning("stream connection closed", extra={"source": self.name, "reason": str(info)})
            lost.set()

        consumer = self.endpoint.consumer(f"warren archiver: {self.config.stream}")
        consumer._on_close_handler = on_close  # rstream takes it only in __init__, which StreamEndpoint owns
        self._consumer = consumer
        try:
            offset = self.start_from()
            await consumer.subscribe(
                self.config.stream,
                self._on_message,
                decoder=None,  # keep the AMQP 1.0 bytes as the broker stores them
                offset_specification=offset,
                subscriber_name=SUBSCRIBER,
                initial_credit=10,
            )
            self._connected_once = True
            backoff.session_started()
            log.info(
                "archiving", extra={"source": self.name, "from_offset": offset.offset, "spec": offset.offset_type.name}
            )
            stop = asyncio.ensure_future(self.stopping.wait())
            gone = asyncio.ensure_future(lost.wait())
            failed = asyncio.ensure_future(self.writer.failed.wait())
            try:
                await asyncio.wait({stop, gone, failed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                gone.cancel()
                failed.cancel()
            self.writer.raise_if_failed()
            if lost.is_set() and not self.stopping.is_set():
                raise ConnectionError("stream connection closed")
        finally:
            self._consumer = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.close(), 10)

    def _on_message(self, message: bytes, context: MessageContext) -> Awaitable[None] | None:
        # A plain function: rstream awaits only what it gets back, so the usual case costs no coroutine.
        if self.writer.error is not None:
            return None  # the session is ending; we resume after the archive's last offset
        if self._last_offset is not None and context.offset <= self._last_offset:
            return None  # delivered again after a resubscription: already in the writer
        self.writer.append_stream(bytes(message), context.offset, context.timestamp)
        self._last_offset = context.offset
        self.archived += 1
        if not self.writer.has_room:
            return self.writer.wait_for_room()  # holds rstream's reader, so credit stops flowing
        return None

    def _on_durable(self, durable: Durable) -> None:
        consumer = self._consumer
        if consumer is not None and durable.last_offset is not None:
            task = asyncio.ensure_future(consumer.store_offset(self.config.stream, SUBSCRIBER, durable.last_offset))
            task.add_done_callback(_ignore_failure)


def _ignore_failure(task: asyncio.Future[None]) -> None:
    # The broker-side offset only mirrors the archive's checkpoint; failing to store it loses nothing.
    if not task.cancelled() and task.exception() is not None:
        log.debug("could not store the offset on the broker", extra={"reason": str(task.exception())})
