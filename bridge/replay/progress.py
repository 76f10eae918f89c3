"""Replay progress: a one-line bar on a terminal (messages, bytes, rate, ETA), log lines otherwise, and
the status line systemd shows for a replay it runs."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("warren.replay")

REDRAW_EVERY = 0.2
LOG_EVERY = 10.0


class Progress:
    def __init__(self, total: int | None, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.messages = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._shown = 0.0
        self.lag_s: float | None = None  # follow mode: how far behind the archive's newest record

    def add(self, messages: int, size: int) -> None:
        self.messages += messages
        self.bytes += size
        now = time.monotonic()
        if now - self._shown >= (REDRAW_EVERY if self.tty else LOG_EVERY):
            self._shown = now
            self.show()

    def rate(self) -> float:
        return self.messages / max(1e-6, time.monotonic() - self.started)

    def describe(self) -> str:
        rate = self.rate()
        text = f"{self.messages}"
        if self.total:
            text += f"/{self.total} messages ({100 * self.messages / self.total:.0f}%)"
        else:
            text += " messages"
        text += f", {self.bytes / 1e6:.1f} MB, {rate:,.0f} msg/s"
        if self.total and rate > 0 and self.messages < self.total:
            text += f", ETA {(self.total - self.messages) / rate:.0f}s"
        if self.lag_s is not None:
            text += f", lag {self.lag_s:.1f}s"
        return text

    def show(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.describe())
            self.stream.flush()
        else:
            log.info("replay progress", extra={"progress": self.describe()})

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.describe() + "\n")
            self.stream.flush()


class ReplayStatus:
    """What systemd is told about a replay (bridge/service_notify.py): ready once it runs, and its
    progress, refreshed every few seconds."""

    def __init__(self, archive: str, progress: Progress, *, follow: bool) -> None:
        self.archive = archive
        self.progress = progress
        self.follow = follow
        self.changed = asyncio.Event()  # nothing to announce at once: the line is refreshed on a timer

    def ready(self) -> bool:
        return True

    def line(self) -> str:
        doing = "following" if self.follow else "replaying"
        return f"{doing} {self.archive}: {self.progress.describe()}"
