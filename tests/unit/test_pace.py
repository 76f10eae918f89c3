"""`--pace original|Nx`: records held back to their original gaps (or N times shorter), and after a stall
the schedule moves on instead of sending what fell behind in a burst."""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import ConfigError
from bridge.replay.pacing import PACE_SLACK, Pace, parse_pace

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def paced(speedup: float, times_ns: list[int], clock: Clock, *, anchor_ns: int | None = None) -> list[float]:
    """When each record went out (clock seconds), the records taking no time of their own."""
    pace = Pace(speedup, anchor_ns=anchor_ns, clock=clock, sleep=clock.sleep)
    out = []

    async def go() -> None:
        for t in times_ns:
            await pace.wait_for(t)
            out.append(round(clock.now, 6))

    asyncio.run(go())
    return out


def test_original_pace_keeps_the_gaps_and_a_speed_up_divides_them():
    times = [0, 1 * S, 1 * S, 3 * S, 3 * S + S // 2]
    assert paced(1.0, times, Clock()) == [100.0, 101.0, 101.0, 103.0, 103.5]
    assert paced(2.0, times, Clock()) == [100.0, 100.5, 100.5, 101.5, 101.75]


def test_the_windows_start_is_the_anchor_so_the_first_record_waits_its_distance_from_it():
    assert paced(1.0, [5 * S, 6 * S], Clock(), anchor_ns=3 * S) == [102.0, 103.0]


def test_after_a_stall_the_gaps_that_follow_are_kept_not_sent_in_a_burst():
    clock = Clock()
    pace = Pace(1.0, clock=clock, sleep=clock.sleep)

    async def go() -> list[float]:
        sent = []
        for i, t in enumerate([0, 1 * S, 2 * S, 3 * S]):
            await pace.wait_for(t)
            sent.append(clock.now)
            if i == 1:
                clock.now += 5  # the target blocked publishing for 5 s
        return sent

    sent = asyncio.run(go())
    assert sent == [100.0, 101.0, 106.0, 107.0]  # not 106.0, 106.0
    assert pace.slid == pytest.approx(4.0)


def test_a_little_late_is_caught_up_within_the_slack():
    clock = Clock()
    pace = Pace(1.0, clock=clock, sleep=clock.sleep)

    async def go() -> list[float]:
        sent = []
        for t in [0, 1 * S, 2 * S]:
            await pace.wait_for(t)
            sent.append(round(clock.now, 6))
            clock.now += PACE_SLACK / 2  # publishing took a while
        return sent

    assert asyncio.run(go()) == [100.0, 101.0, 102.0]
    assert pace.slid == 0


@pytest.mark.parametrize(("text", "speedup"), [("original", 1.0), ("2x", 2.0), ("0.5x", 0.5), ("10x", 10.0)])
def test_pace_values(text: str, speedup: float):
    assert parse_pace(text) == speedup


@pytest.mark.parametrize("text", ["fast", "2", "0x", "-1x", "infx", "nanx", "x"])
def test_bad_pace_values_are_refused_naming_what_is_expected(text: str):
    with pytest.raises(ConfigError, match="expected original, or a speed-up"):
        parse_pace(text)
