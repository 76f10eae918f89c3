"""Times on the command line: RFC 3339 with Z or an offset, a bare date, relative times and `now`, and a
clear ConfigError for anything else, including times that do not say which zone they are in."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import ConfigError
from bridge.timespec import format_time, parse_time

S = 1_000_000_000
NOW = 1_795_383_000 * S + 123_456_789  # 2026-11-22T21:30:00.123456789Z


def ns(*args: int) -> int:
    """UTC nanoseconds of a datetime, computed without floats."""
    delta = dt.datetime(*args, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return delta // dt.timedelta(microseconds=1) * 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T03:00:00Z", ns(2026, 11, 23, 3)),
        ("2026-11-23T03:00:00.5Z", ns(2026, 11, 23, 3) + S // 2),
        ("2026-11-23T03:00:00.123456Z", ns(2026, 11, 23, 3, 0, 0, 123456)),
        ("2026-11-23T03:00:00+00:00", ns(2026, 11, 23, 3)),
        ("2026-11-23T03:00:00+05:30", ns(2026, 11, 22, 21, 30)),
        ("2026-11-23T03:00:00-08:00", ns(2026, 11, 23, 11)),
        ("2026-11-23 03:00:00Z", ns(2026, 11, 23, 3)),
        ("  2026-11-23T03:00:00Z  ", ns(2026, 11, 23, 3)),
    ],
)
def test_rfc3339_times_with_z_or_an_offset_are_utc_nanoseconds(text, expected):
    assert parse_time(text, now_ns=NOW) == expected


def test_a_bare_date_is_midnight_utc():
    assert parse_time("2026-11-23", now_ns=NOW) == ns(2026, 11, 23)


@pytest.mark.parametrize(
    ("text", "seconds_ago"),
    [
        ("-30s", 30),
        ("-30sec", 30),
        ("-15m", 15 * 60),
        ("-15min", 15 * 60),
        ("-2h", 2 * 3600),
        ("-1d", 86400),
        ("-1w", 7 * 86400),
        ("-1.5h", 5400),
        ("- 15m", 15 * 60),
    ],
)
def test_relative_times_count_back_from_now(text, seconds_ago):
    assert parse_time(text, now_ns=NOW) == NOW - seconds_ago * S


def test_now_is_now():
    assert parse_time("now", now_ns=NOW) == NOW


def test_now_without_a_given_clock_is_the_wall_clock():
    before = dt.datetime.now(dt.UTC).timestamp()
    parsed = parse_time("now") / S
    after = dt.datetime.now(dt.UTC).timestamp()
    assert before - 1 <= parsed <= after + 1


@pytest.mark.parametrize(
    "text",
    ["", "garbage", "yesterday", "15m", "+15m", "-15x", "-m", "2026-13-01T00:00:00Z", "2026-11-23T25:00:00Z", "1e9"],
)
def test_garbage_is_a_config_error_that_quotes_the_value_and_shows_the_accepted_forms(text):
    with pytest.raises(ConfigError) as caught:
        parse_time(text, now_ns=NOW, what="--since")
    message = str(caught.value)
    assert "--since" in message
    assert repr(text) in message
    assert "RFC 3339" in message


@pytest.mark.parametrize("text", ["2026-11-23T03:00:00", "2026-11-23T03:00", "2026-11-23 03:00:00.5"])
def test_a_time_without_an_offset_is_refused_rather_than_guessed(text):
    with pytest.raises(ConfigError, match="no UTC offset"):
        parse_time(text, now_ns=NOW, what="--until")


def test_format_time_is_rfc3339_utc_with_z():
    assert format_time(ns(2026, 11, 23, 3)) == "2026-11-23T03:00:00Z"
    assert format_time(ns(2026, 11, 23, 3, 0, 0, 250000)) == "2026-11-23T03:00:00.250000Z"
    assert format_time(0) == "1970-01-01T00:00:00Z"


@given(st.integers(ns(1900, 1, 1), ns(9999, 12, 31, 23, 59, 59, 999999)))
def test_format_time_round_trips_through_parse_time_to_the_microsecond(t):
    text = format_time(t)
    assert text.endswith("Z")
    assert parse_time(text) == t - t % 1000


@given(st.integers(ns(1900, 1, 2), ns(9999, 12, 30)), st.sampled_from(["+05:30", "-08:00", "+00:00", "+14:00"]))
def test_an_offset_names_the_same_instant_as_z(t, offset):
    t -= t % 1000
    sign = 1 if offset[0] == "+" else -1
    hours, minutes = map(int, offset[1:].split(":"))
    local = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=t // 1000, hours=sign * hours, minutes=sign * minutes)
    assert parse_time(local.isoformat() + offset) == t


@pytest.mark.parametrize(
    "text",
    ["1969-12-31T23:59:59.5Z", "1960-01-01T00:00:00.25Z", "5000-01-01T00:00:00.999999Z"],
)
def test_times_with_fractions_far_from_the_epoch_parse_exactly(text):
    parsed = dt.datetime.fromisoformat(text)
    expected = (parsed - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000
    assert parse_time(text) == expected


def test_a_lower_case_z_is_rfc3339_too():
    assert parse_time("2026-11-23T03:00:00z", now_ns=NOW) == ns(2026, 11, 23, 3)
    assert parse_time("2026-11-23t03:00:00.5z", now_ns=NOW) == ns(2026, 11, 23, 3) + S // 2
