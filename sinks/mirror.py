"""Several sinks as one: writes count as done when a quorum of them has the object; the rest catch up.

A put returns once `write_quorum` members hold the object; the other writes go on in the background,
and a member that failed (or was down at start) is caught up from the others, key by key, with capped
backoff, for as long as it takes. A member whose write stalls is reported by name after a few seconds
(and while it lasts); it holds nothing back while the others make the quorum. Reads go to the first
member that has the object. `reconcile()` finds what members lack after a restart (the catch-up queue
lives in memory) and queues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sinks.base import ObjectInfo, Sink
from sinks.deadlines import STALL_REPEAT, STALL_WARNING, StallReport
from sinks.errors import ObjectExists, ObjectNotFound, SinkConfigError, SinkError, SinkUnavailable

log = logging.getLogger("warren.sinks")
T = TypeVar("T")

CATCH_UP_DELAYS = (0.5, 1, 2, 5, 10, 30)
DOWN_REPORT = 60.0  # seconds a member may lag before the loud report, and between reports


@dataclass
class _Member:
    sink: Sink
    lagging: dict[str, int] = field(default_factory=dict)  # key -> version of the write it missed
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    down_since: float | None = None
    last_report: float = 0.0
    task: asyncio.Task[None] | None = None


class MirroredSink(Sink):
    def __init__(self, sinks: Sequence[Sink], write_quorum: int | None = None) -> None:
        if not sinks:
            raise SinkConfigError("a mirror needs at least one sink", sink="mirror()")
        quorum = len(sinks) if write_quorum is None else write_quorum
        if not 1 <= quorum <= len(sinks):
            raise SinkConfigError(
                f"write-quorum {quorum} is impossible with {len(sinks)} sinks", sink=self._describe(sinks, quorum)
            )
        self.members = [_Member(s) for s in sinks]
        self.min_segment_share = max(s.min_segment_share for s in sinks)  # every member stores each segment
        self.write_quorum = quorum
        self._background: set[asyncio.Task[None]] = set()
        self._version = 0  # orders writes of one key: an older write landing late must not hide a newer miss
        self._url = self._describe(sinks, quorum)

    @staticmethod
    def _describe(sinks: Sequence[Sink], quorum: int) -> str:
        return f"mirror({', '.join(s.url for s in sinks)}; write-quorum {quorum})"

    @property
    def url(self) -> str:
        return self._url

    @property
    def lag(self) -> dict[str, int]:
        """Per member, how many objects it still lacks."""
        return {m.sink.url: len(m.lagging) for m in self.members}

    # ---- writing ----------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self._version += 1
        version = self._version
        done = asyncio.get_running_loop().create_future()
        successes = 0
        failures: list[SinkError] = []
        remaining = len(self.members)
        written: list[_Member] = []
        conflict = False

        async def one(member: _Member) -> None:
            nonlocal successes, remaining, conflict
            try:
                await self._put_member(member, key, data, if_absent, version)
            except ObjectExists as err:
                failures.append(err)
                conflict = True
            except SinkError as err:
                failures.append(err)
                if err.retryable:
                    self._lag(member, key, version)
                else:
                    log.error("sink refused a write", extra={"sink": member.sink.url, "key": key, "error": str(err)})
            else:
                successes += 1
                written.append(member)
            finally:
                remaining -= 1
                if conflict:
                    # Another object already stands under the key: members that took ours (they lacked
                    # it) are set right from the others, and skipped by reads until then.
                    for m in written:
                        self._lag(m, key, version)
                    written.clear()
                if not done.done():
                    if successes >= self.write_quorum:
                        done.set_result(None)
                    elif successes + remaining < self.write_quorum:
                        done.set_exception(self._quorum_error(key, failures))

        tasks = [asyncio.create_task(one(member)) for member in self.members]
        for task in tasks:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            await done
        except ObjectExists:
            # Settle which members took our bytes (they are set right from the others) before anyone reads.
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _stall_report(self, member: _Member, key: str, doing: str, size: int) -> StallReport:
        return StallReport(
            log,
            sink=member.sink.url,
            key=key,
            operation=doing,
            size=size,
            warn_after=STALL_WARNING,
            repeat=STALL_REPEAT,
            message="mirror member stalled: sink write still pending",
        )

    async def _put_member(self, member: _Member, key: str, data: bytes, if_absent: bool, version: int) -> None:
        with self._stall_report(member, key, "writing", len(data)) as pending:
            try:
                await member.sink.put(key, data, if_absent=if_absent)
            except ObjectExists:
                # The member already has it: the same bytes (an earlier, unacknowledged try) count as written.
                if await member.sink.get(key) != data:
                    raise
            pending.completed()
        if member.lagging.get(key, version + 1) <= version:
            del member.lagging[key]  # only a write at least as new as the one it missed settles the lag
        if member.lagging:
            member.wakeup.set()  # it takes writes again: catch it up now rather than at its next retry

    def _quorum_error(self, key: str, failures: list[SinkError]) -> SinkError:
        reasons = "; ".join(str(f) for f in failures)
        permanent = next((f for f in failures if not f.retryable), None)
        if permanent is not None and all(not f.retryable for f in failures):
            return type(permanent)(f"write-quorum {self.write_quorum} not met: {reasons}", sink=self.url, key=key)
        return SinkUnavailable(f"write-quorum {self.write_quorum} not met: {reasons}", sink=self.url, key=key)

    def _lag(self, member: _Member, key: str, version: int) -> None:
        member.lagging[key] = max(version, member.lagging.get(key, 0))
        if member.down_since is None:
            member.down_since = time.monotonic()
            log.warning("sink fell behind; catching it up from the others", extra={"sink": member.sink.url})
        member.wakeup.set()
        if member.task is None or member.task.done():
            member.task = asyncio.create_task(self._catch_up(member), name=f"catch up {member.sink.url}")

    async def _catch_up(self, member: _Member) -> None:
        attempt = 0
        while member.lagging:
            key, version = next(iter(member.lagging.items()))
            try:
                data = await self._get_from_others(member, key)
                if data is None:
                    # No member has it yet: the write that it missed is still landing on the others.
                    raise SinkUnavailable("no other member holds it yet", sink=member.sink.url, key=key)
                with self._stall_report(member, key, "catching up", len(data)) as pending:
                    await member.sink.put(key, data)
                    pending.completed()
                # A newer miss meanwhile keeps it queued (at the back); a newer write may have settled it.
                current = member.lagging.pop(key, None)
                if current is not None and current != version:
                    member.lagging[key] = current
                attempt = 0
            except SinkError as err:
                self._report_down(member, err)
                delay = CATCH_UP_DELAYS[min(attempt, len(CATCH_UP_DELAYS) - 1)] * random.uniform(0.5, 1.0)
                attempt += 1
                member.wakeup.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
                # arrives as the wakeup is set (a failing write sets it), and the close that cancelled
                # this loop then waited on it for as long as the member stayed down.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await member.wakeup.wait()
        if member.down_since is not None:
            log.warning(
                "sink caught up",
                extra={"sink": member.sink.url, "after_s": round(time.monotonic() - member.down_since)},
            )
        member.down_since = None

    def _report_down(self, member: _Member, err: SinkError) -> None:
        now = time.monotonic()
        down = now - (member.down_since or now)
        if down >= DOWN_REPORT and now - member.last_report >= DOWN_REPORT:
            member.last_report = now
            log.error(
                "sink down: archiving goes on while the write quorum holds",
                extra={
                    "sink": member.sink.url,
                    "down_s": round(down),
                    "lagging": len(member.lagging),
                    "error": str(err),
                },
            )

    async def _get_from_others(self, member: _Member, key: str) -> bytes | None:
        """The object from a member that has it; None if none has it any more (deleted meanwhile)."""
        errors: list[SinkError] = []
        for other in self.members:
            if other is member or key in other.lagging:
                continue
            try:
                return await other.sink.get(key)
            except ObjectNotFound:
                continue
            except SinkError as err:
                errors.append(err)
        if errors:
            raise errors[0]
        return None

    async def reconcile(self, prefix: str = "") -> int:
        """Queue every object under `prefix` that some member lacks and another has; returns how many."""
        listings: list[dict[str, int] | None] = []
        for member in self.members:
            try:
                listings.append({info.key: info.size async for info in member.sink.list(prefix)})
            except SinkError as err:
                log.warning("cannot list a sink to reconcile it", extra={"sink": member.sink.url, "error": str(err)})
                listings.append(None)
        every = set().union(*(listing for listing in listings if listing is not None))
        queued = 0
        for member, listing in zip(self.members, listings, strict=True):
            missing = sorted(every) if listing is None else sorted(every - listing.keys())
            for key in missing:
                self._lag(member, key, self._version)
                queued += 1
        return queued

    # ---- reading ----------------------------------------------------------------------------

    async def _first(self, key: str, read: Callable[[Sink], Awaitable[T]]) -> T:
        errors: list[SinkError] = []
        for member in self.members:
            if key in member.lagging:
                continue
            try:
                return await read(member.sink)
            except ObjectNotFound as err:
                errors.append(err)
            except SinkError as err:
                if not err.retryable:
                    raise
                errors.append(err)
        transient = [e for e in errors if e.retryable]
        if transient:
            raise transient[0]
        raise ObjectNotFound("no member of the mirror holds it", sink=self.url, key=key)

    async def get(self, key: str) -> bytes:
        return await self._first(key, lambda s: s.get(key))

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await self._first(key, lambda s: s.get_range(key, start, length))

    async def head(self, key: str) -> ObjectInfo | None:
        unavailable: SinkUnavailable | None = None
        absent = 0
        for member in self.members:
            if key in member.lagging:
                continue
            try:
                info = await member.sink.head(key)
            except SinkUnavailable as err:
                unavailable = unavailable or err
                continue
            if info is not None:
                return info
            absent += 1
        # Any write reached `write_quorum` members, so this many "absent" answers mean it was never written.
        if unavailable is not None and absent < len(self.members) - self.write_quorum + 1:
            raise unavailable
        return None

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """The union of the members' listings: the most complete view while one lags."""
        listings: list[list[ObjectInfo]] = []
        errors: list[SinkError] = []
        for member in self.members:
            try:
                listings.append([info async for info in member.sink.list(prefix)])
            except SinkUnavailable as err:
                errors.append(err)
        if not listings:
            raise errors[0]
        seen: set[str] = set()
        for info in heapq.merge(*listings, key=lambda i: i.key):
            if info.key not in seen:
                seen.add(info.key)
                yield info

    async def delete(self, key: str) -> None:
        for member in self.members:
            member.lagging.pop(key, None)
        await asyncio.gather(*(m.sink.delete(key) for m in self.members))

    async def check(self) -> None:
        """Every member is checked; a member down at start is tolerated while the quorum is reachable."""
        results = await asyncio.gather(*(m.sink.check() for m in self.members), return_exceptions=True)
        healthy = 0
        for member, result in zip(self.members, results, strict=True):
            if result is None:
                healthy += 1
            elif isinstance(result, SinkError) and result.retryable:
                log.warning("sink unavailable at start", extra={"sink": member.sink.url, "error": str(result)})
                member.down_since = time.monotonic()
            elif isinstance(result, BaseException):
                raise result
        if healthy < self.write_quorum:
            raise SinkUnavailable(
                f"only {healthy} sink(s) reachable, write-quorum is {self.write_quorum}", sink=self.url
            )

    async def close(self) -> None:
        pending = [t for t in self._background if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
        for member in self.members:
            if member.task is not None:
                member.task.cancel()
                await asyncio.wait({member.task})  # not `await task`: a cancel of close() itself stays one
            if member.lagging:
                log.warning(
                    "stopping with a sink behind; `warren sync` or the next start catches it up",
                    extra={"sink": member.sink.url, "lagging": len(member.lagging)},
                )
        await asyncio.gather(*(m.sink.close() for m in self.members), return_exceptions=True)
