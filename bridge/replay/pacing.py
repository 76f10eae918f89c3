"""`--rate N`: at most N messages per second, smoothed over short bursts."""

from __future__ import annotations

import asyncio
import time


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
