"""ConfirmTracker against a plain model: a set of settled sequence numbers and a list of nacks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core.channel import ConfirmTracker


class Model:
    """What the tracker must say, computed the obvious way."""

    def __init__(self) -> None:
        self.published = 0
        self.settled: set[int] = set()
        self.nacked: list[int] = []

    def settle(self, tag: int, multiple: bool, ack: bool) -> None:
        tags = [t for t in range(1, tag + 1) if t not in self.settled] if multiple else [tag]
        self.settled.update(tags)
        if not ack:
            self.nacked.extend(tags)

    @property
    def outstanding(self) -> int:
        return self.published - len(self.settled)

    @property
    def confirmed_through(self) -> int:
        low = 0
        while low + 1 in self.settled:
            low += 1
        return low

    def unsettled(self) -> list[int]:
        return [t for t in range(1, self.published + 1) if t not in self.settled]


def check(tracker: ConfirmTracker, model: Model, *, exact_low: bool = True) -> None:
    assert tracker.outstanding == model.outstanding
    assert tracker.nacked == model.nacked
    if exact_low:
        assert tracker.low == model.confirmed_through
    else:
        # never claims more than is settled
        assert tracker.low <= model.confirmed_through


def publish(tracker: ConfirmTracker, model: Model, count: int) -> None:
    model.published += count
    tracker.published = model.published  # the channel sets it to the last sequence number


def test_fresh_tracker():
    tracker = ConfirmTracker()
    assert (tracker.outstanding, tracker.low, tracker.nacked) == (0, 0, [])


def test_examples():
    tracker = ConfirmTracker()
    tracker.published = 5
    tracker.settle(2, multiple=False, ack=True)  # out of order
    assert (tracker.outstanding, tracker.low) == (4, 0)
    tracker.settle(1, multiple=False, ack=False)
    assert (tracker.outstanding, tracker.low, tracker.nacked) == (3, 2, [1])
    tracker.settle(5, multiple=True, ack=False)
    assert (tracker.outstanding, tracker.low, tracker.nacked) == (0, 5, [1, 3, 4, 5])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_broker_settling_in_order(data):
    """RabbitMQ's usual behaviour: confirms in publish order, `multiple` covering a run."""
    tracker, model = ConfirmTracker(), Model()
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        unsettled = model.unsettled()
        if not unsettled or data.draw(st.booleans(), label="publish?"):
            publish(tracker, model, data.draw(st.integers(1, 5), label="count"))
        else:
            multiple = data.draw(st.booleans(), label="multiple")
            ack = data.draw(st.booleans(), label="ack")
            tag = data.draw(st.sampled_from(unsettled), label="tag") if multiple else unsettled[0]
            tracker.settle(tag, multiple, ack)
            model.settle(tag, multiple, ack)
        check(tracker, model)
    # the broker eventually settles everything
    if model.published:
        tracker.settle(model.published, True, True)
        model.settle(model.published, True, True)
    check(tracker, model)
    assert tracker.outstanding == 0
    assert tracker.low == model.published


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_broker_settling_out_of_order(data):
    """Single confirms in any order (several queues, quorum queues), `multiple` settling every
    still-unsettled tag up to its own."""
    tracker, model = ConfirmTracker(), Model()
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        unsettled = model.unsettled()
        if not unsettled or data.draw(st.booleans(), label="publish?"):
            publish(tracker, model, data.draw(st.integers(1, 5), label="count"))
        else:
            tag = data.draw(st.sampled_from(unsettled), label="tag")
            multiple = data.draw(st.booleans(), label="multiple")
            ack = data.draw(st.booleans(), label="ack")
            tracker.settle(tag, multiple, ack)
            model.settle(tag, multiple, ack)
        check(tracker, model, exact_low=False)
    for tag in reversed(model.unsettled()):
        tracker.settle(tag, False, True)
        model.settle(tag, False, True)
    check(tracker, model, exact_low=False)
    assert tracker.outstanding == 0


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_out_of_order_single_confirms_advance_low_exactly(data):
    tracker, model = ConfirmTracker(), Model()
    publish(tracker, model, data.draw(st.integers(1, 30), label="published"))
    order = data.draw(st.permutations(range(1, model.published + 1)), label="order")
    for tag in order:
        ack = data.draw(st.booleans(), label="ack")
        tracker.settle(tag, False, ack)
        model.settle(tag, False, ack)
        check(tracker, model)


def test_multiple_confirm_below_an_earlier_single_one_advances_low_past_it():
    tracker = ConfirmTracker()
    tracker.published = 5
    tracker.settle(5, multiple=False, ack=True)  # 5 first, on its own
    tracker.settle(4, multiple=True, ack=True)  # then 1..4 together
    assert tracker.outstanding == 0
    assert tracker.low == 5
