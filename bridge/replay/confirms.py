"""The confirm window of one source's replay: what went to the target and is not yet confirmed, in order.

Queue and stream targets both publish in archive order and learn, later, what the target took: a queue
from publisher confirms (every sequence number up to a point), a stream from each publishing id's
confirm. Either way the window settles from its oldest entry and never past one still unconfirmed, so
`confirmed_seq` in the state file only ever names a prefix of the archive the target holds. Replayed
means confirmed by the target: a record counts in the summary when it settles, not when it is sent,
and none counts once the target refused anything (the source stops there).
"""

from __future__ import annotations

import asyncio
from collections import deque

from bridge.archive.record import Record
from bridge.replay.outcome import SourceOutcome
from bridge.replay.state import SourceProgress


class ConfirmWindow:
    """In-flight (publish id, archive sequence, record) in publish order; publish ids only increase."""

    def __init__(self, progress: SourceProgress, outcome: SourceOutcome) -> None:
        self.progress = progress
        self.outcome = outcome
        self.refusals: list[str] = []  # why the target refused what it refused, first first
        self._in_flight: deque[tuple[int, int, Record | None]] = deque()
        self._confirmed_early: set[int] = set()  # confirmed while an older one is still in flight
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._in_flight)

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    def sent(self, publish_id: int, record: Record) -> None:
        """`record` went to the target as `publish_id`."""
        self._in_flight.append((publish_id, record.seq, record))

    def passed_over(self, publish_id: int, seq: int) -> None:
        """Archive sequence `seq` is not sent (a proven copy): settled with the publish `publish_id` before it,
        so that the state file moves past it, and counted as nothing."""
        self._in_flight.append((publish_id, seq, None))

    def settle_through(self, publish_id: int) -> bool:
        """The target confirmed every publish up to `publish_id` (acked or nacked: a nack is also
        `refuse`d). Whether the window moved."""
        in_flight = self._in_flight
        settled = []
        while in_flight and in_flight[0][0] <= publish_id:
            settled.append(in_flight.popleft())
        if not settled:
            return False
        self._settle(settled)
        self._changed.set()
        return True

    def confirm(self, publish_id: int) -> bool:
        """The target confirmed `publish_id`, in whatever order confirms come. Whether the window moved."""
        in_flight = self._in_flight
        if not in_flight or in_flight[0][0] != publish_id:
            self._confirmed_early.add(publish_id)
            return False
        settled = [in_flight.popleft()]
        early = self._confirmed_early
        while in_flight and in_flight[0][0] in early:
            early.discard(in_flight[0][0])
            settled.append(in_flight.popleft())
        self._settle(settled)
        self._changed.set()
        return True

    def refuse(self, reason: str) -> None:
        """The target refused a publish: nothing more counts as replayed, and the source is to stop."""
        self.refusals.append(reason)
        self._changed.set()

    def finish(self) -> None:
        """At the end of a run: with nothing left in flight, nothing is in doubt any more."""
        if not self._in_flight:
            self.progress.published_seq = self.progress.confirmed_seq

    async def wait_below(self, limit: int) -> None:
        """Until fewer than `limit` publishes are in flight, or the target refused one."""
        while len(self._in_flight) >= limit and not self.refusals:
            self._changed.clear()
            await self._changed.wait()

    async def wait_settled(self, timeout: float) -> bool:
        """Until nothing is in flight (True), or the target refused one or `timeout` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._in_flight and not self.refusals:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return False
        return not self._in_flight

    def _settle(self, settled: list[tuple[int, int, Record | None]]) -> None:
        """Count what the target now holds, oldest first (a confirm settles up to a window at once)."""
        self.progress.confirmed_seq = settled[-1][1]
        if self.refusals:
            return
        records = [record for _, _, record in settled if record is not None]
        if not records:
            return
        outcome = self.outcome
        outcome.replayed += len(records)
        outcome.bytes += sum(len(record.body) for record in records)
        outcome.cover(min(r.time_ns for r in records), max(r.time_ns for r in records))
