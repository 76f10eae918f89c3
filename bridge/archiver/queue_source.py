"""One queue source: consume over our AMQP client into its segment writer, with shovel semantics.

Modes: `move` consumes and acknowledges (on-confirm: once the segment holding the message is durable;
on-publish: once the writer has it; no-ack: never asked); `tap` moves from warren's own queue bound
like the source; `snapshot` consumes without acknowledging up to the queue's depth, commits, then
cancels so the broker requeues everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from bridge.archive.record import fingerprint
from bridge.archive.writer import Durable, SegmentWriter
from bridge.archiver.backoff import Backoff
from bridge.archiver.tap import prepare_tap
from bridge.config import QueueSourceConfig
from protocol import connect
from protocol.client_channel import Channel
from protocol.errors import AuthenticationError, ChannelClosedByBroker, InvalidURI, ProtocolError
from protocol.message import Message

log = logging.getLogger("warren.archiver")

NOT_FOUND = 404


@dataclass
class _Session:
    generation: int
    channel: Channel
    ended: asyncio.Future[BaseException | None]


class QueueSource:
    def __init__(self, config: QueueSourceConfig, writer: SegmentWriter, stopping: asyncio.Event) -> None:
        self.config = config
        self.writer = writer
        self.stopping = stopping
        self.archived = 0  # messages handed to the writer by this process
        self.done = False  # src-delete-after reached, or the snapshot is complete
        self._limit: int | None = config.delete_after if isinstance(config.delete_after, int) else None
        self._session: _Session | None = None
        self._generation = 0
        self._connected_once = False
        self._held_ack = 0  # on-publish: the highest tag not yet acknowledged while the writer is full
        self._ack_waiter: asyncio.Future[None] | None = None
        writer.on_durable = self._on_durable

    @property
    def name(self) -> str:
        return f"queue {self.config.queue!r} in vhost {self.config.vhost!r}"

    async def run(self) -> None:
        """Archive until stopped or done; survives broker restarts and lost connections."""
        backoff = Backoff(self.config.reconnect_delay)
        while not self.stopping.is_set() and not self.done:
            try:
                await self._run_session(backoff)
            except (AuthenticationError, InvalidURI):
                if not self._connected_once:
                    raise  # wrong credentials or URI at start: stop with a clear error
                log.error("broker refused the archiver", extra={"source": self.name}, exc_info=True)
            except ChannelClosedByBroker as err:
                if err.reply_code == NOT_FOUND and not self._connected_once:
                    raise
                log.warning("source unavailable", extra={"source": self.name, "reason": str(err)})
            except (ProtocolError, OSError) as err:
                log.warning("connection lost", extra={"source": self.name, "reason": str(err)})
            if self.stopping.is_set() or self.done:
                break
            delay = backoff.next_delay()
            log.info("reconnecting", extra={"source": self.name, "in_seconds": round(delay, 1)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _run_session(self, backoff: Backoff) -> None:
        c = self.config
        conn = await connect(c.uri, name=f"warren archiver: {c.queue}")
        try:
            channel = await conn.channel()
            queue = c.queue
            if c.mode == "tap":
                queue = await prepare_tap(channel, c)
            depth = (await channel.queue_declare(queue, passive=True)).message_count
            if self._limit is None and c.delete_after == "queue-length":
                self._limit = self.archived + depth
            if c.mode == "snapshot":
                self._limit = depth
                await channel.qos(0)  # every message up to the depth must be ours at once, unacknowledged
            else:
                await channel.qos(c.prefetch_count)
            if self._limit is not None and self.archived >= self._limit:
                self.done = True
                return
            self._connected_once = True
            backoff.session_started()
            self._generation += 1
            ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
            session = _Session(self._generation, channel, ended)
            self._session = session
            tag = await channel.consume(
                queue,
                lambda m: self._on_message(session, m),
                no_ack=c.ack_mode == "no-ack" and c.mode != "snapshot",
                on_cancel=lambda reason: ended.done() or ended.set_result(reason),
            )
            log.info("archiving", extra={"source": self.name, "mode": c.mode, "depth": depth, "from_queue": queue})
            stop = asyncio.ensure_future(self.stopping.wait())
            failed = asyncio.ensure_future(self.writer.failed.wait())
            closed = asyncio.ensure_future(asyncio.shield(conn.closed))
            try:
                await asyncio.wait({stop, failed, ended, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                failed.cancel()
                closed.cancel()
            self.writer.raise_if_failed()  # nothing more is acknowledged; the broker keeps the rest
            if ended.done() and isinstance(ended.result(), BaseException):
                raise ended.result()  # type: ignore[misc]  # the broker cancelled us (queue deleted) or we lost it
            if conn.closed.done() and conn.closed.exception():
                raise conn.closed.exception()  # type: ignore[misc]
            # Orderly end: stop deliveries, commit what we hold, acknowledge it, then let go.
            with contextlib.suppress(ProtocolError):
                await channel.cancel(tag)
            await self.writer.flush()
            self._release_held_ack(session)
            if c.mode == "snapshot":
                log.info("snapshot committed", extra={"source": self.name, "messages": self.archived})
        finally:
            self._session = None
            with contextlib.suppress(ProtocolError, OSError):
                await conn.close()

    def _on_message(self, session: _Session, message: Message) -> None:
        if self.writer.error is not None:
            return  # left unacknowledged: the broker requeues it when the session ends
        if self.done or (self._limit is not None and self.archived >= self._limit):
            # Past src-delete-after or the snapshot's depth: not ours; it stays in (or returns to) the queue.
            if self.config.mode != "snapshot" and self.config.ack_mode != "no-ack":
                session.channel.nack(message.delivery_tag, requeue=True)
            return
        fp = fingerprint(message) if message.redelivered else None
        self.writer.append_message(message, token=(session.generation, message.delivery_tag), fingerprint=fp)
        self.archived += 1
        if self.config.ack_mode == "on-publish" and self.config.mode != "snapshot":
            self._held_ack = message.delivery_tag
            if self.writer.has_room:
                self._release_held_ack(session)
            elif self._ack_waiter is None or self._ack_waiter.done():
                self._ack_waiter = asyncio.ensure_future(self._ack_when_room(session))
        if self._limit is not None and self.archived >= self._limit:
            self.done = True
            if not session.ended.done():
                session.ended.set_result(None)  # ends the session in order: cancel, commit, acknowledge

    async def _ack_when_room(self, session: _Session) -> None:
        await self.writer.wait_for_room()
        self._release_held_ack(session)

    def _release_held_ack(self, session: _Session) -> None:
        if self._held_ack and session.channel.is_open:
            session.channel.ack(self._held_ack, multiple=True)
        self._held_ack = 0

    def _on_durable(self, durable: Durable) -> None:
        session = self._session
        if self.config.ack_mode != "on-confirm" or self.config.mode == "snapshot" or session is None:
            return
        generation, delivery_tag = durable.last_token
        # Tags of an earlier channel are void: the broker requeued those messages when it closed, so
        # they come again (redelivered, marked as possible duplicates) and are acknowledged then.
        if generation == session.generation and session.channel.is_open:
            session.channel.ack(delivery_tag, multiple=True)
