"""What the archiver tells its service manager: which sources archive, which fail and why, in one line,
and whether start-up is over (every source consuming, or refused or unreachable and retrying on its own).

`SourceStates` is the supervisor's `SourceWatch`: it hears each source start consuming, fail, and
stop, and sets `changed` so that the notifier (bridge/service_notify.py) says so at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from bridge.logs import scrub
from protocol.errors import (
    AuthenticationError,
    BrokerError,
    ConnectionLost,
    StreamAuthenticationError,
    StreamConnectionLost,
    StreamNotFound,
)

SHOWN_FAILURES = 3  # failing sources named in the status line; the others are counted
REASON_MAX_CHARS = 80


class Watched(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def archived(self) -> int: ...


class SourceStates:
    """The state of every source, by name: starting, consuming, failing (why), or stopped."""

    def __init__(self, sources: Sequence[Watched]) -> None:
        self.sources = list(sources)
        self.changed = asyncio.Event()
        self._consuming: set[str] = set()
        self._failing: dict[str, str] = {}  # name -> why, while it retries
        self._standby: set[str] = set()  # another archiver holds its lease (lease.py)
        self._stopped: dict[str, str | None] = {}  # name -> why, None when it finished or was stopped
        self._settled: set[str] = set()  # consumed or failed at least once: its start-up is over
        self.failures: dict[str, int] = {}  # name -> times it failed (the metrics)

    def add(self, source: Watched) -> None:
        """A source discovery found (bridge/archiver/discovery.py)."""
        self.sources.append(source)
        self.changed.set()

    def remove(self, name: str) -> None:
        """A discovered source whose queue is gone: no longer reported."""
        self.sources = [s for s in self.sources if s.name != name]
        for states in (self._consuming, self._settled, self._standby):
            states.discard(name)
        self._failing.pop(name, None)
        self._stopped.pop(name, None)
        self.failures.pop(name, None)
        self.changed.set()

    # SourceWatch, called by supervision.supervise

    def consuming(self, source: str) -> None:
        self._consuming.add(source)
        self._standby.discard(source)
        self._failing.pop(source, None)
        self._settled.add(source)
        self.changed.set()

    def standing_by(self, source: str) -> None:
        self._consuming.discard(source)
        self._failing.pop(source, None)
        self._standby.add(source)
        self._settled.add(source)
        self.changed.set()

    def failing(self, source: str, error: BaseException) -> None:
        self._consuming.discard(source)
        self._standby.discard(source)
        self._failing[source] = short_reason(error)
        self.failures[source] = self.failures.get(source, 0) + 1
        self._settled.add(source)
        self.changed.set()

    # called by the service when a source's supervisor returns or raises

    def stopped(self, source: str, error: BaseException | None) -> None:
        self._consuming.discard(source)
        self._standby.discard(source)
        self._failing.pop(source, None)
        self._stopped[source] = None if error is None else short_reason(error)
        self._settled.add(source)
        self.changed.set()

    def is_consuming(self, source: str) -> bool:
        return source in self._consuming

    def stopped_for_good(self) -> dict[str, str]:
        """The sources that stopped with an error, and why."""
        return {name: why for name, why in self._stopped.items() if why is not None}

    def ready(self) -> bool:
        """Start-up is over once every source either consumes or has failed its first attempt (and
        retries on its own): READY does not wait for a queue that may never exist."""
        return all(s.name in self._settled for s in self.sources)

    def line(self) -> str:
        """e.g. "archiving 3 of 4 sources, 1200 messages since start; 1 failing: queue 'x' in vhost '/' (not found)"."""
        total = len(self.sources)
        archived = sum(s.archived for s in self.sources)
        if not self.ready():
            head = f"starting: {len(self._consuming)} of {total} sources consuming"
        else:
            head = f"archiving {len(self._consuming)} of {total} sources, {archived} messages since start"
        parts = [head]
        if self._standby:
            parts.append(f"{len(self._standby)} standing by (another archiver holds them)")
        if self._failing:
            parts.append(f"{len(self._failing)} failing: " + _named(self._failing))
        broken = self.stopped_for_good()
        finished = len(self._stopped) - len(broken)
        if broken:
            parts.append(f"{len(broken)} stopped for good: " + _named(broken))
        if finished:
            parts.append(f"{finished} finished")
        return "; ".join(parts)


def _named(reasons: dict[str, str]) -> str:
    shown = [f"{name} ({why})" for name, why in sorted(reasons.items())[:SHOWN_FAILURES]]
    more = len(reasons) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def short_reason(error: BaseException) -> str:
    """Why a source fails, in a few words: the broker's reply name where it gave one."""
    if isinstance(error, (AuthenticationError, StreamAuthenticationError)):
        return "credentials refused"
    if isinstance(error, StreamNotFound):
        return "not found"
    if isinstance(error, (ConnectionLost, StreamConnectionLost)):
        return "connection lost"
    if isinstance(error, BrokerError):
        return error.reply_name.lower().replace("_", " ")
    text = scrub(str(error)) or type(error).__name__
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 3] + "..."
