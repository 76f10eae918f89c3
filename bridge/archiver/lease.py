"""Which archiver archives a source, decided by the broker itself: the one holding the source's lease,
an exclusive consumer on `warren.lease.<source>`, a small queue of warren's own in the source's vhost.

Any number of archivers may run one configuration (on several hosts: standby and scale-out). For each
source, exactly one holds the lease and archives it; the others wait, trying again every LEASE_RETRY
seconds. When the holder dies, or its connection does, the broker drops its consumer and another takes
the lease within a few seconds. The lease is held on a connection of its own for as long as the
source's session lasts; losing it ends the session at once (another archiver may take over), and a
new session begins by reading the archive's end again, so that it continues after whatever the
previous holder made durable. Where the broker refuses warren the lease queue (permissions), the
source runs without one, as a single archiver would, and says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from bridge.errors import WarrenError
from bridge.own_queues import LEASE_PREFIX, MEMBERS_PREFIX, owned_queue_name
from protocol.aio.connection import Connection, connect
from protocol.errors import ChannelClosedByBroker, ProtocolError

log = logging.getLogger("warren.archiver")

REBALANCE_EVERY = 5.0  # seconds between counts of the archivers sharing a configuration
LEASE_RETRY = 2.0  # seconds between attempts while another archiver holds the lease, give or take a quarter
# The lease queue is classic (RabbitMQ 4 makes quorum queues the default in some vhosts; an exclusive
# consumer on a quorum queue works too, but a classic queue needs no quorum of nodes to be held).
LEASE_ARGUMENTS = {"x-queue-type": "classic"}


class LeaseHeldElsewhere(WarrenError):
    """Another archiver holds this source's lease: this one stands by."""


def lease_queue(kind: str, name: str) -> str:
    return owned_queue_name(f"{LEASE_PREFIX}{kind}.", name)


class Lease:
    """One attempt at a source's lease; `acquire()` raises LeaseHeldElsewhere if another archiver has it."""

    def __init__(self, uri: str, kind: str, name: str, source: str) -> None:
        self.uri = uri
        self.queue = lease_queue(kind, name)
        self.source = source
        self.lost = asyncio.Event()  # set when the lease ends while held (its connection, or its consumer)
        self._conn: Connection | None = None
        self._unavailable_said = False
        self.held = False  # False also when the broker refused warren the lease queue (no lease at all)

    async def acquire(self) -> None:
        lost = self.lost = asyncio.Event()  # this holding's own: a late close of the last one cannot set it
        conn = await connect(self.uri, name=f"warren lease: {self.source}")
        try:
            channel = await conn.channel()
            try:
                await channel.queue_declare(self.queue, durable=True, arguments=LEASE_ARGUMENTS)
            except ChannelClosedByBroker as err:
                if err.reply_code != 403:
                    raise
                self._without_lease(str(err))
                await conn.close()
                return
            channel = await conn.channel()
            try:
                await channel.consume(
                    self.queue, lambda _: None, no_ack=True, exclusive=True, on_cancel=lambda _: lost.set()
                )
            except ChannelClosedByBroker as err:
                if err.reply_code == 403:
                    raise LeaseHeldElsewhere(f"{self.source}: another archiver holds it ({self.queue})") from err
                raise
        except BaseException:
            with contextlib.suppress(ProtocolError, OSError):
                await conn.close()
            raise
        self._conn = conn
        self.held = True
        conn.closed.add_done_callback(lambda _: lost.set())

    def _without_lease(self, why: str) -> None:
        if not self._unavailable_said:
            log.warning(
                "no lease for the source: run a single archiver for it (another would archive it too)",
                extra={"source": self.source, "lease": self.queue, "reason": why},
            )
            self._unavailable_said = True

    async def release(self) -> None:
        conn, self._conn, self.held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(ProtocolError, OSError):
                await conn.close()


def retry_delay() -> float:
    """Spread over the instances, so that those starting together share the sources."""
    return LEASE_RETRY * random.uniform(0.75, 1.25)


class Share:
    """This archiver's fair share of the sources, among the archivers of one configuration.

    Each archiver consumes (not exclusively) from `warren.members.<group>`, a queue of warren's own whose
    consumer count is the number of archivers running the configuration. Every REBALANCE_EVERY seconds
    `run()` counts them: this one takes leases while it holds fewer than its share (the sources divided
    among the archivers, rounded up), and hands one back, ending that session in order, while it holds
    more. Without a count (the broker refused the queue, or is away) it takes whatever lease is free.
    """

    def __init__(self, uri: str, group: str, sources: Callable[[], int]) -> None:
        self.uri = uri
        self.queue = owned_queue_name(MEMBERS_PREFIX, group)
        self.sources = sources  # how many sources the configuration has now (discovery changes it)
        self.members: int | None = None  # archivers of the configuration; None: unknown
        self.held: list[asyncio.Event] = []  # the holders' yield events, in the order they took their lease

    def fair(self) -> int | None:
        if not self.members:
            return None
        return -(-self.sources() // self.members)

    def may_take(self) -> bool:
        fair = self.fair()
        return fair is None or len(self.held) < fair

    def took(self, yielding: asyncio.Event) -> None:
        self.held.append(yielding)

    def gave_back(self, yielding: asyncio.Event) -> None:
        with contextlib.suppress(ValueError):
            self.held.remove(yielding)

    def rebalance(self) -> None:
        fair = self.fair()
        if fair is not None and len(self.held) > fair and not any(e.is_set() for e in self.held):
            self.held[-1].set()  # the newest: the others keep archiving undisturbed

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                conn = await connect(self.uri, name="warren archiver (members)")
            except (ProtocolError, OSError, TimeoutError) as err:
                self.members = None
                log.debug("cannot count the archivers", extra={"reason": str(err)})
            else:
                try:
                    await self._count_while_connected(conn, stopping)
                except (ProtocolError, OSError, TimeoutError) as err:
                    log.debug("cannot count the archivers", extra={"reason": str(err)})
                finally:
                    self.members = None
                    with contextlib.suppress(ProtocolError, OSError):
                        await conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), REBALANCE_EVERY)

    async def _count_while_connected(self, conn: Connection, stopping: asyncio.Event) -> None:
        channel = await conn.channel()
        await channel.queue_declare(self.queue, durable=True, auto_delete=True, arguments=LEASE_ARGUMENTS)
        await channel.consume(self.queue, lambda _: None, no_ack=True)
        while not stopping.is_set() and not conn.closed.done():
            self.members = (await channel.queue_declare(self.queue, passive=True)).consumer_count
            self.rebalance()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), REBALANCE_EVERY)
