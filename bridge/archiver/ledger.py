"""Writing the gap ledger (bridge/archive/ledger.py) while archiving: one note per start, stop,
interruption or skipped stream range, written in order in the background.

A note never holds up archiving: the messages themselves are what acknowledgements wait for. A note
the sink will not take yet is retried with backoff for as long as the writer lives; one still
unwritten when the archiver stops is given a few seconds, then dropped with a warning. A missing note
is not silent either: a later run's `started` after a run that never said it stopped is read as
"ended without a word".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable

from bridge.archive.ledger import Event, LedgerEntry, entry_key, write_entry
from bridge.archive.record import Source
from bridge.archiver.backoff import Backoff
from sinks import Sink, SinkError

log = logging.getLogger("warren.ledger")

# This process, as the ledger names it: host, pid and start time tell two runs apart.
RUN = f"{socket.gethostname()}/{os.getpid()}/{time.time_ns()}"
CLOSE_TIMEOUT = 5.0  # seconds a stopping archiver gives its last notes
REFUSED_CLOSE_TIMEOUT = 1.0  # ... when the sink refused the last attempt


class LedgerNotes:
    def __init__(
        self, sink: Sink, prefix: str, source: Source, *, run: str = RUN, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.sink, self.prefix, self.source = sink, prefix, source
        self.run, self.clock = run, clock
        self.interruptions = 0  # noted by this process (the metrics)
        self.offsets_skipped = 0
        self._pending: deque[LedgerEntry] = deque()
        self._writing: asyncio.Task[None] | None = None
        self._last_at = 0
        self._refused = False  # the last attempt failed: a stopping archiver does not wait long on such a sink

    def note(
        self, event: Event, *, reason: str | None = None, from_offset: int | None = None, to_offset: int | None = None
    ) -> None:
        at = max(self.clock(), self._last_at + 1)  # strictly increasing: the ledger's order is the notes' order
        self._last_at = at
        self._pending.append(LedgerEntry(at, event, self.run, reason, from_offset, to_offset))
        if event is Event.INTERRUPTED:
            self.interruptions += 1
        if from_offset is not None and to_offset is not None:
            self.offsets_skipped += to_offset - from_offset + 1
        if self._writing is None or self._writing.done():
            self._writing = asyncio.ensure_future(self._write_pending())

    async def _write_pending(self) -> None:
        backoff = Backoff(0.2, max_delay=30.0)
        while self._pending:
            entry = self._pending[0]
            try:
                await write_entry(self.sink, self.prefix, self.source, entry)
            except SinkError as err:
                self._refused = True
                if not err.retryable:
                    log.error(
                        "cannot write a gap-ledger note; dropped",
                        extra={"source": str(self.source), "event": str(entry.event), "error": str(err)},
                    )
                    self._pending.popleft()
                    continue
                await asyncio.sleep(backoff.next_delay())
                continue
            self._refused = False
            backoff = Backoff(0.2, max_delay=30.0)
            self._pending.popleft()

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what is pending, for at most `timeout` seconds (one, if the sink refuses writes now)."""
        writing = self._writing
        if writing is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(writing), min(timeout, REFUSED_CLOSE_TIMEOUT) if self._refused else timeout
            )
        if not writing.done():
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
        if self._pending:
            keys = [entry_key(self.prefix, self.source, e) for e in self._pending]
            log.warning(
                "gap-ledger notes not written before stopping", extra={"source": str(self.source), "keys": keys}
            )
