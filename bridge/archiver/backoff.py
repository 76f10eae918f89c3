"""Delays between attempts, for every retry in the archiver: a source reconnecting (the Shovel's
`reconnect-delay`) and a sink write retried. Doubled on repeated failure, capped, with jitter."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

MAX_DELAY = 60.0
HEALTHY_AFTER = 30.0  # a session that lasted this long resets the backoff


@dataclass
class Backoff:
    base: float
    max_delay: float = MAX_DELAY
    attempts: int = 0
    started: float = field(default_factory=time.monotonic)

    def session_started(self) -> None:
        self.started = time.monotonic()

    def next_delay(self) -> float:
        if time.monotonic() - self.started >= HEALTHY_AFTER:
            self.attempts = 0
        delay = min(self.max_delay, self.base * 2**self.attempts)
        self.attempts += 1
        return delay * random.uniform(0.8, 1.0)
