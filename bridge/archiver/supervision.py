"""Keeping one source running, on its own: one session (connection) at a time, and after any failure
a new one, after the Shovel's `reconnect-delay` doubled up to a minute; so that one failing source
never stops the others.

The operator is told which failure it was: the broker refusing us (credentials, permissions, a queue
deleted or never declared, a name it rejects) is an error at every attempt; a lost connection is a
warning. Three failures end a source instead: its archive cannot be written (nothing more can be
acknowledged; the messages stay in the broker), any failure of a one-shot source (a snapshot), and an
error no typed failure explains (a bug): the source stops, reported, and the others go on. When
every source is refused before any of them archived anything, the archiver stops with the first
refusal (`StartupGate`): a process that can archive nothing would only hide the mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Protocol

from bridge.archive.ledger import Event
from bridge.archiver.backoff import Backoff
from bridge.archiver.lease import Lease, LeaseHeldElsewhere, Share, retry_delay
from bridge.archiver.ledger import LedgerNotes
from bridge.archiver.status import short_reason
from bridge.archiver.writer import ArchiveWriteFailed, SegmentConflict
from bridge.errors import ConfigError, WarrenError
from protocol.errors import (
    AuthenticationError,
    CertificateRejected,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    InvalidURI,
    ProtocolError,
)
from protocol.management import ManagementError
from sinks import SinkError

log = logging.getLogger("warren.archiver")

# Reply codes with which the broker refuses what we asked (rather than losing the connection).
REFUSALS = {
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    530: "NOT_ALLOWED",  # e.g. no access to the vhost
}


class SourceRefused(WarrenError):
    """The broker refused a source for a reason it states (stream sources raise it; queue sources'
    refusals arrive as the broker's channel or connection close)."""


class LeaseLost(WarrenError):
    """The connection holding a source's lease ended while its session ran."""


class SourceSession(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def done(self) -> bool: ...

    async def run_session(self, consuming: Callable[[], None]) -> None:
        """One connection's life: returns when stopped or done, raises when it failed. Calls
        `consuming` once messages flow."""
        ...

    def make_lease(self) -> Lease | None:
        """The source's lease among archivers of one configuration, or None if it needs none."""
        ...

    async def take_over(self) -> None:
        """Before a session: continue after what the archive holds now."""
        ...

    async def hand_over(self) -> None:
        """Before the lease goes: make durable what the writer holds."""
        ...

    @property
    def yielding(self) -> asyncio.Event:
        """Set to end the session in order, as a stop would, for another archiver to take over."""
        ...

    async def reset_writer(self) -> bool:
        """After a SegmentConflict: a fresh writer, if nothing it held was acknowledged."""
        ...

    @property
    def ledger(self) -> LedgerNotes:
        """Where the source's starts, stops and interruptions are noted (the gap ledger)."""
        ...


class SourceWatch(Protocol):
    """Hears each source's state change (bridge/archiver/status.py makes a status line of them)."""

    def consuming(self, source: str) -> None: ...

    def failing(self, source: str, error: BaseException) -> None: ...

    def standing_by(self, source: str) -> None: ...


class StartupGate:
    """Stops the archiver when every source is refused before any of them got going."""

    def __init__(self, sources: int, stopping: asyncio.Event) -> None:
        self.sources = sources
        self.stopping = stopping
        self.failure: BaseException | None = None
        self._started = False
        self._refused: set[int] = set()

    def consuming(self) -> None:
        self._started = True

    def refused(self, source_id: int, error: BaseException) -> None:
        if self._started:
            return
        self._refused.add(source_id)
        if len(self._refused) == self.sources and self.failure is None:
            self.failure = error
            self.stopping.set()


def is_refusal(error: BaseException) -> bool:
    if isinstance(error, (AuthenticationError, SourceRefused, CertificateRejected)):
        return True
    if isinstance(error, ManagementError):  # tap bindings, snapshot checks: the API says no
        return error.status is not None and 400 <= error.status < 500
    return isinstance(error, (ChannelClosedByBroker, ConnectionClosedByBroker)) and error.reply_code in REFUSALS


async def supervise(
    session: SourceSession,
    stopping: asyncio.Event,
    gate: StartupGate,
    reconnect_delay: float,
    *,
    one_shot: bool = False,
    watch: SourceWatch | None = None,
    share: Share | None = None,
) -> None:
    """Run `session` until stopped or done; see the module's docstring for what ends it otherwise.
    With a lease (lease.py), each session runs only while this archiver holds it, and, with `share`,
    only while this archiver holds no more than its share of the sources."""
    backoff = Backoff(reconnect_delay)
    started = False
    lease = session.make_lease()
    standing_by = False
    noted: Event | None = None  # the ledger's last word on this source from this run

    def note(event: Event, reason: str | None = None) -> None:
        """Each change between consuming and not, once; a run's first failure too, before it ever consumed."""
        nonlocal noted
        if one_shot:
            return  # a snapshot copies a queue once: it has no spell of archiving to interrupt
        if event is Event.STARTED:
            wanted = noted is not Event.STARTED
        else:
            wanted = noted is Event.STARTED or (noted is None and event is Event.INTERRUPTED)
        if wanted:
            noted = event
            session.ledger.note(event, reason=reason)

    def consuming() -> None:
        nonlocal started
        started = True
        backoff.session_started()
        gate.consuming()
        note(Event.STARTED)
        if watch is not None:
            watch.consuming(session.name)

    def stand_by() -> None:
        nonlocal standing_by
        if not standing_by:
            log.info("standing by: another archiver holds the source", extra={"source": session.name})
            standing_by = True
            gate.consuming()  # a standby is not a refusal: the archiver runs on
            if watch is not None:
                watch.standing_by(session.name)

    ended = False  # by a stop, or done: not by an error
    try:
        while not stopping.is_set() and not session.done:
            try:
                if lease is not None:
                    if share is not None and not share.may_take():
                        stand_by()  # this archiver has its share: the others take the rest
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stopping.wait(), retry_delay())
                        continue
                    try:
                        await lease.acquire()
                    except LeaseHeldElsewhere:
                        stand_by()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stopping.wait(), retry_delay())
                        continue
                    if standing_by:
                        log.info("taking over the source", extra={"source": session.name})
                        standing_by = False
                session.yielding.clear()
                if share is not None and lease is not None and lease.held:
                    share.took(session.yielding)
                try:
                    await session.take_over()
                    await _run_holding(session, consuming, lease)
                finally:
                    if lease is not None and lease.held:
                        # Durable before the lease goes, so the next holder continues after all of it.
                        with contextlib.suppress(ArchiveWriteFailed, SinkError):
                            await session.hand_over()
                    if lease is not None:
                        await lease.release()
                    if share is not None:
                        share.gave_back(session.yielding)
                if session.yielding.is_set() and not stopping.is_set():
                    log.info("handing the source to another archiver: this one holds more than its share",
                             extra={"source": session.name})  # fmt: skip
                    note(Event.HANDED_OVER)
                    standing_by = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), retry_delay())
                    continue
            except SegmentConflict as err:
                if not await session.reset_writer():
                    raise
                log.warning(
                    "another archiver wrote this source meanwhile: reading the archive's end again",
                    extra={"source": session.name, "reason": str(err)},
                )
                continue
            except (ArchiveWriteFailed, ConfigError, InvalidURI):
                raise
            except (ProtocolError, WarrenError, SinkError, OSError, TimeoutError) as err:
                if one_shot:
                    raise  # a snapshot is not resumed: a second attempt would read the queue again
                if is_refusal(err):
                    log.error("the broker refused the source", extra={"source": session.name, "reason": str(err)})
                    if not started:
                        gate.refused(id(session), err)
                else:
                    log.warning("connection lost", extra={"source": session.name, "reason": str(err) or repr(err)})
                note(Event.INTERRUPTED, short_reason(err))
                if watch is not None:
                    watch.failing(session.name, err)
            if stopping.is_set() or session.done:
                break
            delay = backoff.next_delay()
            log.info("reconnecting", extra={"source": session.name, "in_seconds": round(delay, 1)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        ended = True
    finally:
        error = sys.exc_info()[1]
        if ended:
            note(Event.STOPPED, "finished: src-delete-after reached" if session.done else None)
        elif error is not None and not isinstance(error, asyncio.CancelledError):
            note(Event.INTERRUPTED, short_reason(error))  # it stops for good: the ledger says why too


async def _run_holding(session: SourceSession, consuming: Callable[[], None], lease: Lease | None) -> None:
    """The session, ended at once if the lease is lost: another archiver may be taking over."""
    if lease is None or not lease.held:
        await session.run_session(consuming)
        return
    running = asyncio.ensure_future(session.run_session(consuming))
    lost = asyncio.ensure_future(lease.lost.wait())
    try:
        await asyncio.wait({running, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
    if not running.done():
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, ProtocolError, WarrenError, SinkError, OSError):
            await running
        raise LeaseLost(f"{session.name}: the lease's connection ended; another archiver may take over")
    running.result()
