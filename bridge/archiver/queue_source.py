"""One queue source: consume over our AMQP client into its segment writer, with shovel semantics.

Modes: `move` consumes and acknowledges (on-confirm: once the segment holding the message is durable;
on-publish: once the writer has it; no-ack: never asked); `tap` moves from warren's own queue bound
like the source; `snapshot` consumes without acknowledging up to the queue's depth, commits, then
cancels so the broker requeues everything.

Acknowledgements go out with the acknowledgement witness (witness.py) and each session starts by
reading back the records the broker may deliver again, so that a redelivered copy is marked as one
in the archive (copies.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.archive.record import message_fingerprint
from bridge.archive.snapshots import SnapshotRun, record_snapshot
from bridge.archiver.copies import CopyMatcher, InDoubt, read_in_doubt
from bridge.archiver.lease import Lease
from bridge.archiver.ledger import LedgerNotes
from bridge.archiver.snapshot_guard import check_snapshot_safe
from bridge.archiver.tap import prepare_tap
from bridge.archiver.witness import Acknowledger, WitnessUnavailable, read_witness, witness_queue, write_baseline
from bridge.archiver.writer import Durable, WriterFactory
from bridge.config import QueueSourceConfig
from protocol import Connection, connect
from protocol.aio.channel import Channel
from protocol.core.message import Message
from protocol.errors import ProtocolError
from protocol.management import ManagementClient, ManagementError

log = logging.getLogger("warren.archiver")

# How long a session waits for the consumers of a previous one (ours, from before a crash or a lost
# connection) to leave the queue before it consumes without proof of copies.
OTHER_CONSUMERS_WAIT = 5.0
# Without proof, the newest records a redelivery is compared with. A broker restarted after a crash
# can deliver again messages whose acknowledgements it had applied but not yet written down: far more
# than a prefetch window.
UNPROVEN_LOOKBACK = 10_000
# A snapshot is complete when the queue's depth at its start has been read, or when nothing more
# arrives for this long (other consumers took some meanwhile).
SNAPSHOT_IDLE = 2.0


@dataclass
class _Session:
    generation: int
    channel: Channel
    ended: asyncio.Future[BaseException | None]
    acks: Acknowledger | None
    copies: CopyMatcher


class QueueSource:
    def __init__(
        self,
        config: QueueSourceConfig,
        make_writer: WriterFactory,
        stopping: asyncio.Event,
        *,
        snapshot_id: int | None = None,
    ) -> None:
        self.config = config
        self.writer = make_writer(self._on_durable)
        self.ledger = LedgerNotes(self.writer.sink, self.writer.prefix, self.writer.source)
        self.stopping = stopping
        self.yielding = asyncio.Event()  # ends the session in order, for another archiver (lease.Share)
        self.snapshot_id = snapshot_id if config.mode == "snapshot" else None
        self.archived = 0  # messages handed to the writer by this process
        self.copies = 0  # of them, proven copies of earlier records
        self.possible_copies = 0
        self.done = False  # src-delete-after reached, or the snapshot is complete
        self._limit: int | None = config.delete_after if isinstance(config.delete_after, int) else None
        self._session: _Session | None = None
        self._generation = 0
        self._held_ack: tuple[int, int] | None = None  # on-publish: (tag, seq) held while the writer is full
        self._ack_waiter: asyncio.Future[None] | None = None
        self._last_delivery = time.monotonic()
        self._witness_warned = False
        self._first_seq: int | None = None  # of this process's records
        self.consuming_from: str | None = None  # the queue of the current session (a tap's own, in tap mode)

    @property
    def name(self) -> str:
        return f"queue {self.config.queue!r} in vhost {self.config.vhost!r}"

    def make_lease(self) -> Lease | None:
        """Whose turn it is to archive this queue, among archivers of one configuration (lease.py);
        a snapshot, which takes nothing from the queue, needs none."""
        if self.config.mode == "snapshot" or not self.config.lease:
            return None
        return Lease(self.config.uri, "queue", self.config.queue, self.name)

    async def take_over(self) -> None:
        """A session begins: continue after whatever is durable in the archive now (another archiver
        may have written it since this writer last looked)."""
        await self.writer.flush()
        await self.writer.recover()

    async def hand_over(self) -> None:
        """Before the lease goes to another archiver: what the writer holds made durable first."""
        await self.writer.flush()

    async def reset_writer(self) -> bool:
        """After a SegmentConflict: a fresh writer, whose records the next session reads from the
        archive's end. Only where the lost segments' messages were never acknowledged (on-confirm)."""
        if self.config.ack_mode != "on-confirm":
            return False
        self.writer = await self.writer.renewed()
        return True

    @property
    def acknowledges(self) -> bool:
        return self.config.ack_mode != "no-ack" and self.config.mode != "snapshot"

    async def run_session(self, consuming: Callable[[], None]) -> None:
        c = self.config
        conn = await connect(c.uri, name=f"warren archiver: {c.queue}")
        try:
            channel = await conn.channel()
            queue = c.queue
            if c.mode == "tap":
                queue = await prepare_tap(channel, c)
            elif c.mode == "snapshot":
                await check_snapshot_safe(c)
            info = await channel.queue_declare(queue, passive=True)
            if self._limit is None and c.delete_after == "queue-length":
                self._limit = self.archived + info.message_count
            if c.mode == "snapshot":
                self._limit = info.message_count
                await channel.qos(0)  # every message up to the depth must be ours at once, unacknowledged
            else:
                await channel.qos(c.prefetch_count)
            if self._limit is not None and self.archived >= self._limit:
                self.done = True
                return
            exclusive = await self._alone_on(channel, queue, info.consumer_count)
            in_doubt, witness = await self._in_doubt(conn, queue, exclusive)
            acks = Acknowledger(channel, witness) if self.acknowledges else None
            if acks is not None:
                await acks.start()
            self._generation += 1
            ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
            session = _Session(self._generation, channel, ended, acks, CopyMatcher(in_doubt))
            self._session = session
            self._last_delivery = time.monotonic()
            tag = await channel.consume(
                queue,
                lambda m: self._on_message(session, m),
                no_ack=c.ack_mode == "no-ack" and c.mode != "snapshot",
                exclusive=exclusive,
                on_cancel=lambda reason: _settle(ended, reason),
            )
            self.consuming_from = queue
            consuming()
            log.info(
                "archiving",
                extra={
                    "source": self.name,
                    "mode": c.mode,
                    "depth": info.message_count,
                    "from_queue": queue,
                    "in_doubt": len(in_doubt.records),
                    "copies": "proven" if in_doubt.proven else "unproven",
                },
            )
            try:
                await self._until_session_ends(conn, session)
                self.writer.raise_if_failed()  # nothing more is acknowledged; the broker keeps the rest
                if ended.done() and isinstance(ended.result(), BaseException):
                    raise ended.result()  # type: ignore[misc]  # the broker cancelled us (queue deleted) or we lost it
                if conn.closed.done() and conn.closed.exception():
                    raise conn.closed.exception()  # type: ignore[misc]
                # Orderly end: stop deliveries, commit what we hold, acknowledge it, then let go.
                with contextlib.suppress(ProtocolError):
                    await channel.cancel(tag)
                await self.writer.flush()
                if acks is not None:
                    self._release_held_ack(session)
                    await acks.settle()
            finally:
                if acks is not None:
                    await acks.stop()
            if self.snapshot_id is not None:
                await self._record_snapshot()
        finally:
            self._session = None
            with contextlib.suppress(ProtocolError, OSError):
                await conn.close()

    async def _record_snapshot(self) -> None:
        assert self.snapshot_id is not None
        w = self.writer
        first = self._first_seq if self._first_seq is not None else 0
        run = SnapshotRun(
            self.snapshot_id, first, w.committed_seq if self.archived else 0, self.archived, time.time_ns()
        )
        await record_snapshot(w.sink, w.prefix, w.source, run)
        log.info("snapshot committed", extra={"source": self.name, "messages": self.archived})

    async def _until_session_ends(self, conn: Connection, session: _Session) -> None:
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(self.yielding.wait()),
            asyncio.ensure_future(self.writer.failed.wait()),
            asyncio.ensure_future(asyncio.shield(conn.closed)),
        ]
        if self.config.mode == "snapshot":
            waits.append(asyncio.ensure_future(self._snapshot_idle(session)))
        try:
            await asyncio.wait({*waits, session.ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _snapshot_idle(self, session: _Session) -> None:
        while not session.ended.done():
            await asyncio.sleep(SNAPSHOT_IDLE / 4)
            if time.monotonic() - self._last_delivery >= SNAPSHOT_IDLE and not session.ended.done():
                log.info(
                    "snapshot complete: the queue holds fewer messages than at the start",
                    extra={"source": self.name, "messages": self.archived, "depth_at_start": self._limit},
                )
                self.done = True
                session.ended.set_result(None)

    async def _alone_on(self, channel: Channel, queue: str, consumers: int) -> bool:
        """Whether this session can consume exclusively: the queue has no other consumer, once those of
        an earlier session of ours (a crash, a lost connection) have gone."""
        if self.config.mode == "snapshot" or not self.config.exclusive:
            return False
        deadline = time.monotonic() + OTHER_CONSUMERS_WAIT
        while consumers and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            consumers = (await channel.queue_declare(queue, passive=True)).consumer_count
        if consumers:
            log.warning(
                "the queue has other consumers: copies delivered again after a crash cannot be proven; they are "
                "archived as possible copies",
                extra={"source": self.name, "queue": queue, "consumers": consumers},
            )
        return consumers == 0

    async def _in_doubt(self, conn: Connection, queue: str, exclusive: bool) -> tuple[InDoubt, str | None]:
        """The records the broker may deliver again, and the witness queue to acknowledge through."""
        if not self.acknowledges:
            return InDoubt(), None  # without acknowledgements nothing of ours comes again
        await self.writer.flush()  # an earlier session's records become durable: they are in doubt too
        witness: str | None = witness_queue(queue)
        acked_through: int | None = None
        try:
            acked_through = await read_witness(conn, witness_queue(queue))
            if acked_through is None and self.writer.committed_seq == 0 and exclusive:
                await write_baseline(conn, witness_queue(queue))  # nothing archived: nothing acknowledged
                acked_through = 0
        except WitnessUnavailable as err:
            if not self._witness_warned:
                log.warning(
                    "no acknowledgement witness: copies delivered again after a crash cannot be proven; they "
                    "are archived as possible copies",
                    extra={"source": self.name, "witness": witness, "reason": str(err)},
                )
                self._witness_warned = True
            witness = None
        last = self.writer.committed_seq
        window = self.config.prefetch_count
        # More in doubt than a few windows means the witness is not this archive's: prove nothing.
        proven = exclusive and acked_through is not None and last - acked_through <= 4 * window
        if proven:
            assert acked_through is not None
            if not await self._is_quorum(queue):
                records = await read_in_doubt(self.writer.sink, self.writer.recent, acked_through)
                return InDoubt(records, proven), witness
            # A quorum queue may deliver again what it was acknowledged just before a crash (copies.py).
            found = await read_in_doubt(self.writer.sink, self.writer.recent, acked_through - window)
            records = [(seq, fp) for seq, fp in found if seq > acked_through]
            earlier = [(seq, fp) for seq, fp in found if seq <= acked_through]
            return InDoubt(records, proven, earlier), witness
        lookback = max(window, UNPROVEN_LOOKBACK)
        records = await read_in_doubt(self.writer.sink, self.writer.recent, last - lookback)
        return InDoubt(records, proven), witness

    async def _is_quorum(self, queue: str) -> bool:
        """Whether `queue` is a quorum queue, as the management API says; if it cannot tell, taken to be
        one (its copies are then marked possible, where they might have been proven: nothing is lost)."""
        try:
            async with ManagementClient(self.config.management_uri, timeout=10.0) as management:
                info = await management.queue(self.config.vhost, queue)
        except ManagementError:
            return True
        return info.get("type") == "quorum"

    def _on_message(self, session: _Session, message: Message) -> None:
        if self.writer.error is not None:
            return  # left unacknowledged: the broker requeues it when the session ends
        self._last_delivery = time.monotonic()
        if self.done or (self._limit is not None and self.archived >= self._limit):
            # Past src-delete-after or the snapshot's depth: not ours; it stays in (or returns to) the queue.
            if self.config.mode != "snapshot" and self.config.ack_mode != "no-ack":
                session.channel.nack(message.delivery_tag, requeue=True)
            return
        fp = mark = None
        if message.redelivered:
            fp = message_fingerprint(message)
            mark = session.copies.classify(fp)
            if mark is not None:
                if mark.proven:
                    self.copies += 1
                else:
                    self.possible_copies += 1
        else:
            session.copies.first_delivery()
        seq = self.writer.append_message(
            message,
            token=(session.generation, message.delivery_tag),
            fingerprint=fp,
            mark=mark,
            snapshot=self.snapshot_id,
        )
        self.archived += 1
        if self._first_seq is None:
            self._first_seq = seq
        if self.config.ack_mode == "on-publish" and self.acknowledges:
            self._held_ack = (message.delivery_tag, seq)
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
        if self._held_ack is not None and session.acks is not None:
            session.acks.through(*self._held_ack)
        self._held_ack = None

    def _on_durable(self, durable: Durable) -> None:
        session = self._session
        if self.config.ack_mode != "on-confirm" or session is None or session.acks is None:
            return
        generation, delivery_tag = durable.last_token
        # Tags of an earlier channel are void: the broker requeued those messages when it closed, so
        # they come again (redelivered, and marked as copies) and are acknowledged then.
        if generation == session.generation:
            session.acks.through(delivery_tag, durable.last_seq)


def _settle(ended: asyncio.Future[BaseException | None], reason: BaseException) -> None:
    if not ended.done():
        ended.set_result(reason)
