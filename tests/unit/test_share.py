"""How archivers of one configuration split its sources (bridge/archiver/lease.Share): each takes
leases while it holds fewer than its share, and hands back the newest one while it holds more."""

from __future__ import annotations

import asyncio

from bridge.archiver.lease import Share


def share(sources: int, members: int | None) -> Share:
    s = Share("amqp://guest:guest@127.0.0.1:5672/", "group", lambda: sources)
    s.members = members
    return s


def test_a_share_is_the_sources_divided_among_the_archivers_rounded_up():
    assert share(4, 2).fair() == 2
    assert share(5, 2).fair() == 3
    assert share(1, 3).fair() == 1
    assert share(4, None).fair() is None  # not counted (yet): take whatever is free


def test_an_archiver_takes_leases_only_below_its_share():
    s = share(4, 2)
    held = [asyncio.Event(), asyncio.Event()]
    assert s.may_take()
    for event in held:
        s.took(event)
    assert not s.may_take()
    s.gave_back(held[0])
    assert s.may_take()
    assert share(4, None).may_take()


def test_above_its_share_it_hands_back_the_newest_lease_one_at_a_time():
    s = share(4, 1)
    held = [asyncio.Event() for _ in range(4)]
    for event in held:
        s.took(event)
    s.rebalance()
    assert not any(e.is_set() for e in held)  # alone: all four are its share

    s.members = 2  # another archiver came
    s.rebalance()
    assert [e.is_set() for e in held] == [False, False, False, True]
    s.rebalance()  # the first hand-back is still under way: no second one yet
    assert [e.is_set() for e in held] == [False, False, False, True]
    s.gave_back(held[3])
    s.rebalance()
    assert [e.is_set() for e in held[:3]] == [False, False, True]
    s.gave_back(held[2])
    s.rebalance()
    assert not any(e.is_set() for e in held[:2])  # two each now
