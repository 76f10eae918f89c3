"""The replay confirm window shared by queue and stream targets: progress moves only over a confirmed
prefix, and a record counts as replayed when the target confirms it, never before, never after a refusal."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.record import Record, RecordKind, Source, SourceKind
from bridge.replay.confirms import ConfirmWindow
from bridge.replay.outcome import SourceOutcome
from bridge.replay.state import SourceProgress


def record(seq: int, body: bytes = b"body") -> Record:
    return Record(seq=seq, captured_ns=seq * 1000, kind=RecordKind.STREAM, body=body, offset=seq - 1)


def window() -> ConfirmWindow:
    outcome = SourceOutcome(Source("/", SourceKind.STREAM, "s"), "stream 's'")
    return ConfirmWindow(SourceProgress(), outcome)


def test_a_sent_record_is_replayed_only_once_confirmed():
    w = window()
    w.sent(1, record(1, b"abc"))
    assert (w.outcome.replayed, w.progress.confirmed_seq, len(w)) == (0, 0, 1)
    assert w.confirm(1)
    assert (w.outcome.replayed, w.outcome.bytes, w.progress.confirmed_seq, len(w)) == (1, 3, 1, 0)
    assert (w.outcome.first_ns, w.outcome.last_ns) == (1000, 1000)


def test_progress_never_passes_an_unconfirmed_publish_whatever_the_order_of_confirms():
    w = window()
    for seq in (1, 2, 3):
        w.sent(seq + 10, record(seq))
    assert not w.confirm(13)
    assert not w.confirm(12)
    assert (w.progress.confirmed_seq, w.outcome.replayed) == (0, 0)
    assert w.confirm(11)  # the oldest: it and the two confirmed early settle together
    assert (w.progress.confirmed_seq, w.outcome.replayed, len(w)) == (3, 3, 0)


def test_settling_through_a_point_settles_everything_sent_up_to_it():
    w = window()
    for seq in (1, 2, 3):
        w.sent(seq, record(seq))
    assert w.settle_through(2)
    assert not w.settle_through(2)
    assert (w.progress.confirmed_seq, w.outcome.replayed, len(w)) == (2, 2, 1)


def test_a_record_passed_over_moves_progress_with_the_publish_before_it_and_counts_as_nothing():
    w = window()
    w.passed_over(0, 1)  # before any publish
    w.sent(1, record(2))
    w.passed_over(1, 3)
    w.sent(2, record(4))
    assert w.settle_through(1)
    assert (w.progress.confirmed_seq, w.outcome.replayed) == (3, 1)


def test_after_a_refusal_nothing_more_counts_as_replayed():
    w = window()
    for seq in (1, 2):
        w.sent(seq, record(seq))
    w.refuse("the target refused publishing id 2 (code 17)")
    assert w.refused and w.refusals == ["the target refused publishing id 2 (code 17)"]
    w.settle_through(2)
    assert (w.progress.confirmed_seq, w.outcome.replayed) == (2, 0)


def test_a_refused_stream_publish_holds_progress_before_it():
    w = window()
    for seq in (1, 2, 3):
        w.sent(seq, record(seq))
    w.confirm(1)
    w.refuse("the target refused publishing id 2 (code 17)")
    w.confirm(3)
    assert (w.progress.confirmed_seq, len(w)) == (1, 2)


def test_finishing_with_nothing_in_flight_leaves_nothing_in_doubt():
    w = window()
    w.progress.published_seq = 1000
    w.sent(1, record(1))
    w.finish()
    assert w.progress.published_seq == 1000
    w.confirm(1)
    w.finish()
    assert w.progress.published_seq == w.progress.confirmed_seq == 1


def test_waiting_ends_when_the_target_confirms_or_refuses_or_time_is_up():
    async def scenario() -> tuple[bool, bool, bool]:
        w = window()
        for seq in (1, 2):
            w.sent(seq, record(seq))
        loop = asyncio.get_running_loop()
        loop.call_soon(w.confirm, 1)
        await asyncio.wait_for(w.wait_below(2), 5)
        timed_out = await w.wait_settled(0.01)
        loop.call_soon(w.confirm, 2)
        settled = await asyncio.wait_for(w.wait_settled(5), 6)
        w.sent(3, record(3))
        loop.call_soon(w.refuse, "no")
        refused = await asyncio.wait_for(w.wait_settled(5), 6)
        return timed_out, settled, refused

    assert asyncio.run(scenario()) == (False, True, False)


@given(st.permutations(list(range(1, 30))), st.integers(0, 29))
def test_confirmed_seq_is_always_the_longest_confirmed_prefix(order, how_many):
    w = window()
    for seq in range(1, 30):
        w.sent(seq * 2, record(seq))
    confirmed = set(order[:how_many])
    for seq in order[:how_many]:
        w.confirm(seq * 2)
    prefix = 0
    while prefix + 1 in confirmed:
        prefix += 1
    assert w.progress.confirmed_seq == prefix
    assert w.outcome.replayed == prefix
