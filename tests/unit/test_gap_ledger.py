"""The gap ledger: what the archiver notes, and the gaps a reader finds in the notes.

`find_gaps` is pure; the notes are written to a real local sink, and `supervise` drives a small
session whose connection drops once, so the notes are the ones the archiver itself makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.archive.ledger import UNANNOUNCED, Event, Gap, LedgerEntry, find_gaps, read_ledger, source_gaps
from bridge.archive.record import Source, SourceKind
from bridge.archiver.lease import Lease
from bridge.archiver.ledger import LedgerNotes
from bridge.archiver.supervision import StartupGate, supervise
from protocol.errors import ConnectionLost
from protocol.loop import run
from sinks import SinkUnavailable
from sinks.local import LocalSink

QUEUE = Source("/", SourceKind.QUEUE, "orders")
STREAM = Source("/", SourceKind.STREAM, "events")
S = 1_000_000_000


def entry(at_s: float, event: Event, run: str = "a", reason: str | None = None) -> LedgerEntry:
    return LedgerEntry(int(at_s * S), event, run, reason)


def spans(gaps: list[Gap]) -> list[tuple[float, float | None, str]]:
    return [(g.start_ns / S, None if g.end_ns is None else g.end_ns / S, g.reason) for g in gaps]


def test_a_clean_restart_is_a_gap_from_the_stop_to_the_next_start() -> None:
    gaps = find_gaps([entry(0, Event.STARTED), entry(10, Event.STOPPED), entry(25, Event.STARTED, "b")])
    assert spans(gaps) == [(10, 25, "the archiver was stopped")]


def test_a_clean_stop_at_the_end_is_where_the_archive_ends_not_a_gap() -> None:
    assert find_gaps([entry(0, Event.STARTED), entry(10, Event.STOPPED)]) == []


def test_an_interruption_is_a_gap_until_consumption_resumes_and_says_why() -> None:
    notes = [entry(0, Event.STARTED), entry(5, Event.INTERRUPTED, reason="connection lost"), entry(7, Event.STARTED)]
    assert spans(find_gaps(notes)) == [(5, 7, "connection lost")]


def test_an_interruption_still_open_at_the_end_is_an_open_gap() -> None:
    notes = [entry(0, Event.STARTED), entry(5, Event.INTERRUPTED, reason="credentials refused")]
    assert spans(find_gaps(notes)) == [(5, None, "credentials refused")]
    (gap,) = find_gaps(notes)
    assert "not archived since" in gap.line()


def test_a_run_that_vanished_is_a_gap_from_its_last_record_to_the_next_run() -> None:
    notes = [entry(0, Event.STARTED, "a"), entry(100, Event.STARTED, "b")]
    captured = {100 * S: 60 * S}  # the last record before run b began was captured at 60 s
    gaps = find_gaps(notes, lambda t: captured.get(t))
    assert spans(gaps) == [(60, 100, UNANNOUNCED)]
    assert spans(find_gaps(notes)) == [(0, 100, UNANNOUNCED)], "without records: from its last note"


def test_a_new_run_failing_after_one_that_vanished_tells_both() -> None:
    notes = [
        entry(0, Event.STARTED, "a"),
        entry(50, Event.INTERRUPTED, "b", reason="not found"),
        entry(80, Event.STARTED, "b"),
    ]
    (gap,) = find_gaps(notes, lambda t: 30 * S)
    assert (gap.start_ns, gap.end_ns) == (30 * S, 80 * S)
    assert gap.reason == f"{UNANNOUNCED}; then not found"


def test_sessions_of_one_run_after_a_conflict_are_no_gap() -> None:
    assert find_gaps([entry(0, Event.STARTED), entry(3, Event.STARTED), entry(9, Event.STOPPED)]) == []


def test_skipped_stream_offsets_are_a_gap_that_counts_what_was_lost() -> None:
    notes = [
        entry(0, Event.STARTED),
        entry(1, Event.STOPPED),
        entry(50, Event.STARTED, "b"),
        LedgerEntry(50 * S + 1, Event.SKIPPED, "b", None, 1200, 1499),
    ]
    down, lost = find_gaps(notes)
    assert (down.lost, lost.lost, lost.skipped) == (0, 300, (1200, 1499))
    assert "offsets 1200..1499" in lost.line() and "up to 300" in lost.line()


@pytest.mark.parametrize(
    ("since", "until", "crosses"),
    [(None, None, True), (0, 9, False), (0, 10, True), (15, 18, True), (20, 30, True), (21, 30, False)],
)
def test_a_window_crosses_a_gap_that_touches_it(since: int | None, until: int | None, crosses: bool) -> None:
    gap = Gap(10 * S, 20 * S, "the archiver was stopped")
    window = (None if since is None else since * S, None if until is None else until * S)
    assert gap.overlaps(*window) is crosses


def test_an_open_gap_touches_every_window_that_reaches_it() -> None:
    gap = Gap(10 * S, None, "connection lost")
    assert gap.overlaps(100 * S, None) and gap.overlaps(None, 10 * S) and not gap.overlaps(None, 9 * S)


class FailsFirstPuts(LocalSink):
    """A local sink whose first `failures` puts fail as a sink that is down would."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        if self.failures:
            self.failures -= 1
            raise SinkUnavailable("injected: down", sink=self.url, key=key)
        await super().put(key, data, if_absent=if_absent)


def test_notes_are_written_in_order_with_distinct_times_even_on_one_clock_tick(tmp_path: Path) -> None:
    async def main() -> list[LedgerEntry]:
        async with LocalSink(tmp_path) as sink:
            notes = LedgerNotes(sink, "", QUEUE, run="r1", clock=lambda: 5 * S)
            notes.note(Event.STARTED)
            notes.note(Event.INTERRUPTED, reason="connection lost")
            notes.note(Event.STARTED)
            await notes.close()
            return await read_ledger(sink, "", QUEUE)

    written = run(main())
    assert [e.event for e in written] == [Event.STARTED, Event.INTERRUPTED, Event.STARTED]
    assert [e.at_ns for e in written] == [5 * S, 5 * S + 1, 5 * S + 2]
    assert written[1].reason == "connection lost" and {e.run for e in written} == {"r1"}


def test_a_note_the_sink_refuses_for_a_while_is_written_once_it_is_back(tmp_path: Path) -> None:
    async def main() -> list[LedgerEntry]:
        sink = FailsFirstPuts(tmp_path, failures=2)
        async with sink:
            notes = LedgerNotes(sink, "", STREAM, run="r1")
            notes.note(Event.SKIPPED, from_offset=10, to_offset=19)
            await notes.close(timeout=10)
            assert notes.offsets_skipped == 10
            return await read_ledger(sink, "", STREAM)

    (written,) = run(main())
    assert (written.event, written.from_offset, written.to_offset) == (Event.SKIPPED, 10, 19)


class DropsOnce:
    """A source session whose first connection drops after consuming begins; the second runs until stopped."""

    def __init__(self, ledger: LedgerNotes, stopping: asyncio.Event) -> None:
        self.ledger = ledger
        self.stopping = stopping
        self.yielding = asyncio.Event()
        self.sessions = 0
        self.done = False

    @property
    def name(self) -> str:
        return "queue 'orders' in vhost '/'"

    def make_lease(self) -> Lease | None:
        return None

    async def take_over(self) -> None:
        pass

    async def hand_over(self) -> None:
        pass

    async def reset_writer(self) -> bool:
        return False

    async def run_session(self, consuming: Callable[[], None]) -> None:
        self.sessions += 1
        consuming()
        if self.sessions == 1:
            raise ConnectionLost("reset by peer")
        self.stopping.set()


def test_supervise_notes_each_start_the_drop_and_the_stop(tmp_path: Path) -> None:
    async def main() -> list[Gap]:
        async with LocalSink(tmp_path) as sink:
            stopping = asyncio.Event()
            ledger = LedgerNotes(sink, "", QUEUE, run="r1")
            session = DropsOnce(ledger, stopping)
            await supervise(session, stopping, StartupGate(1, stopping), reconnect_delay=0.01)
            await ledger.close()
            notes = await read_ledger(sink, "", QUEUE)
            assert [n.event for n in notes] == [Event.STARTED, Event.INTERRUPTED, Event.STARTED, Event.STOPPED]
            assert ledger.interruptions == 1
            return await source_gaps(sink, "", QUEUE)

    (gap,) = run(main())
    assert gap.reason == "connection lost" and gap.end_ns is not None
