"""`--rate N`: at most N messages per second, smoothed over short bursts; `--pace original|Nx`: each
message at its original distance in time from the first, N times faster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bridge.errors import ConfigError

# Later than this behind the schedule (the target blocked publishing, confirms were slow) and the
# schedule moves on: the gaps that follow are kept, rather than the backlog sent in one burst.
PACE_SLACK = 0.5


def parse_pace(text: str) -> float:
    """`original` is 1 (the original gaps); `Nx` is N times faster (`0.5x`: at half the speed)."""
    if text == "original":
        return 1.0
    try:
        speedup = float(text.removesuffix("x")) if text.endswith("x") else float("nan")
    except ValueError:
        speedup = float("nan")
    if not speedup > 0 or speedup == float("inf"):
        raise ConfigError(f"--pace {text}: expected original, or a speed-up such as 2x or 0.5x")
    return speedup


class Pace:
    """Holds each record back until its time: `anchor_ns` (the window's start; else the first record's
    time) is now, and a record of time t is due (t - anchor) / speedup seconds later."""

    def __init__(
        self,
        speedup: float,
        *,
        anchor_ns: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.speedup = speedup
        self._anchor_ns = anchor_ns
        self._started: float | None = None
        self._clock, self._sleep = clock, sleep
        self.slid = 0.0  # seconds the schedule moved on after falling behind

    async def wait_for(self, time_ns: int) -> None:
        now = self._clock()
        if self._started is None:
            self._started = now
            if self._anchor_ns is None:
                self._anchor_ns = time_ns
        assert self._anchor_ns is not None
        due = self._started + (time_ns - self._anchor_ns) / 1e9 / self.speedup
        if due > now:
            await self._sleep(due - now)
        elif now - due > PACE_SLACK:
            self._started += now - due  # fell behind: keep the gaps from here on
            self.slid += now - due


class RateLimit:
    def __init__(self, per_second: float | None, burst: float = 0.1) -> None:
        self.per_second = per_second
        self._allowance = 0.0
        self._burst = max(1.0, (per_second or 0) * burst)
        self._last = time.monotonic()

    async def take(self) -> None:
        if not self.per_second:
            return
        now = time.monotonic()
        self._allowance = min(self._burst, self._allowance + (now - self._last) * self.per_second)
        self._last = now
        if self._allowance < 1:
            await asyncio.sleep((1 - self._allowance) / self.per_second)
            self._allowance = 1
            self._last = time.monotonic()
        self._allowance -= 1
