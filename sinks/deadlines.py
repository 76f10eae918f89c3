"""How long a sink waits on storage before it calls a request stalled, and how a caller says it is waiting.

Every backend bounds each request the same way (`Deadlines`): a few seconds to connect, then a bound on
progress rather than only on total time. Silence longer than `stall` (no byte of an upload taken by the
socket, no byte of an answer, no filesystem step finished) fails the request; so does a request that
moves N bytes and is not done within `stall + N / min_rate`, so a 64 MiB segment has longer than a 1 KiB
checkpoint, and a trickle that never quite stops still ends. A passed deadline is `SinkUnavailable`
(retryable), naming the sink, the key and the operation.

`StallReport` is the caller's half: a write still pending after a few seconds is logged, again while it
lasts, and once more when it completes, so that a stalled sink is never silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

KiB = 1024
MiB = 1024 * KiB

STALL_WARNING = 5.0  # seconds a write may be pending before it is reported
STALL_REPEAT = 15.0  # seconds between reports while it stays pending
UPLOAD_SLICE = 256 * KiB  # an upload is handed to the HTTP client this much at a time, to see it progress


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Per-request bounds shared by every backend (seconds, and bytes per second)."""

    connect: float = 5.0  # to open a connection
    stall: float = 15.0  # without progress: no byte sent or received, no filesystem step finished
    min_rate: float = 256 * KiB  # the slowest transfer still counted as progress, for the total bound

    def for_bytes(self, size: int) -> float:
        """The whole time a request moving `size` bytes may take, once connected."""
        return self.stall + size / self.min_rate


DEFAULT_DEADLINES = Deadlines()


class Stalled(Exception):
    """A request passed one of its deadlines; each sink turns it into SinkUnavailable with its own context."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Upload:
    """A request body handed to an HTTP client a slice at a time, noting when the client took each one.

    aiohttp writes a slice, waits for the socket to drain, then asks for the next: the time of the last
    ask says whether the upload is moving. A server that accepts a connection and stops reading shows
    as an upload that stopped asking, long before any total deadline.
    """

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self.size = len(self._view)
        self.sent = 0  # bytes the client has written (it came back for more after them)
        self.finished = False
        self.moved_at = time.monotonic()

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._slices()

    async def _slices(self) -> AsyncIterator[memoryview]:
        self.sent = 0  # a resent request starts over
        self.finished = False
        self.moved_at = time.monotonic()
        while self.sent < self.size:
            piece = self._view[self.sent : self.sent + UPLOAD_SLICE]
            yield piece
            self.sent += len(piece)
            self.moved_at = time.monotonic()
        self.finished = True


async def bounded(request: Awaitable[T], deadlines: Deadlines, *, size: int = 0, upload: Upload | None = None) -> T:
    """Await one request within its deadlines, or raise `Stalled` (the request is cancelled).

    Bounds: the whole request within `connect + for_bytes(size)`, and while `upload` is being sent, a
    slice taken at least every `stall` seconds (the first one within `connect + stall`). Silence while
    awaiting or reading the answer is the HTTP client's own `stall` read timeout.
    """
    task = asyncio.ensure_future(request)
    started = time.monotonic()
    total = deadlines.connect + deadlines.for_bytes(size)
    try:
        while True:
            now = time.monotonic()
            wake = started + total
            if upload is not None and not upload.finished:
                wake = min(wake, _upload_deadline(upload, deadlines))
            done, _ = await asyncio.wait({task}, timeout=max(wake - now, 0.0))
            if done:
                return task.result()
            now = time.monotonic()
            if now >= started + total:
                raise Stalled(f"not done within {total:.0f}s")
            if upload is not None and not upload.finished and now >= _upload_deadline(upload, deadlines):
                idle = now - upload.moved_at
                if upload.sent == 0:
                    raise Stalled(f"took none of the upload ({upload.size} bytes) in {idle:.1f}s")
                raise Stalled(f"the upload stopped moving at {upload.sent} of {upload.size} bytes for {idle:.1f}s")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # its CancelledError stays in it; ours, if any, propagates


def _upload_deadline(upload: Upload, deadlines: Deadlines) -> float:
    grace = deadlines.stall + (deadlines.connect if upload.sent == 0 else 0.0)
    return upload.moved_at + grace


def content_length(headers: Any, body: object) -> int:
    """The size of a request body: its Content-Length header, else the body's length (0 if unknown)."""
    value = None
    if headers is not None:
        value = headers.get("Content-Length") or headers.get("content-length")
    if value is not None:
        try:
            return int(value)
        except (TypeError, ValueError):
            pass
    return len(body) if isinstance(body, bytes | bytearray | memoryview) else 0


class StallReport:
    """Reports one write while it is pending: `message` after `warn_after` seconds and every `repeat`
    seconds while it lasts, `loud_message` (an error) every `loud_after` seconds once it has lasted that
    long, if given, and a line when it completes. A context manager: leaving it stops the reports.
    Every line names the sink, the key, the operation and how long the write has waited (`waited_s`).

    Timers on the event loop, not a task: a write that completes in time costs one timer handle.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        sink: str,
        key: str,
        operation: str,
        size: int | None = None,
        warn_after: float = STALL_WARNING,
        repeat: float = STALL_REPEAT,
        message: str = "sink write stalled: still waiting for it",
        loud_after: float | None = None,
        loud_message: str = "",
    ) -> None:
        self._log = log
        self._message = message
        self._fields: dict[str, object] = {"sink": sink, "key": key, "operation": operation}
        if size is not None:
            self._fields["bytes"] = size
        self._repeat = repeat
        self._loud_after = loud_after
        self._loud_message = loud_message
        self._loop = asyncio.get_running_loop()
        self.began = time.monotonic()
        self.error: str | None = None  # the last failure of this write, shown in later reports
        self.reported = False
        self._next_loud = loud_after
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(warn_after, self._report)

    @property
    def waited(self) -> float:
        return time.monotonic() - self.began

    def _report(self) -> None:
        waited = self.waited
        fields = dict(self._fields, waited_s=round(waited, 1))
        if self.error is not None:
            fields["error"] = self.error
        self.reported = True
        if self._next_loud is not None and waited >= self._next_loud - 0.05:
            self._log.error(self._loud_message, extra=dict(fields, down_s=round(waited)))
            self._next_loud += self._loud_after or 0.0
            delay = self._next_loud - waited
        else:
            self._log.warning(self._message, extra=fields)
            delay = self._repeat
            if self._next_loud is not None:
                delay = min(delay, self._next_loud - waited)
        self._timer = self._loop.call_later(max(delay, 0.0), self._report)

    def completed(self, message: str = "sink write completed", **fields: object) -> None:
        """The write is done: stop reporting, and say so if it was reported as stalled (or `fields` are given)."""
        self.stop()
        if self.reported or fields:
            self._log.warning(message, extra=dict(self._fields, waited_s=round(self.waited, 1), **fields))

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __enter__(self) -> StallReport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
