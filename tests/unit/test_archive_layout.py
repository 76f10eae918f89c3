"""The archive layout: any queue, stream or vhost name maps to one safe key segment and back, segment keys
name their source and first sequence, and partitions are UTC hours of the capture time."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bridge.archive import layout
from bridge.archive.record import Source, SourceKind

HOUR_NS = 3600 * 1_000_000_000
# 1970 to 2200: capture times a running archiver can see
HOURS = st.integers(0, 230 * 365 * 24)

names = st.text(max_size=40)
tricky_names = ["/", ".", "..", " ", "%", "_x", "", "\x00", "a/b", "../etc", ".tmp-1", "%2F", "%00", "~", "日本/キュー"]
prefixes = st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True), max_size=3).map("/".join)
sources = st.builds(Source, names, st.sampled_from(list(SourceKind)), names)


def utc_hour(captured_ns: int) -> dt.datetime:
    """The UTC hour holding `captured_ns`, by integer arithmetic only."""
    hour = captured_ns // HOUR_NS
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=hour)


@pytest.mark.parametrize("name", tricky_names)
def test_tricky_names_round_trip_through_escape(name):
    assert layout.unescape(layout.escape(name)) == name


@given(name=names)
@example(name="/")
@example(name=".")
@example(name="..")
@example(name="_x")
@example(name="%")
@example(name="")
@example(name="\x00")
def test_any_name_round_trips_through_escape(name):
    assert layout.unescape(layout.escape(name)) == name


@given(name=names)
@example(name=".")
@example(name="..")
@example(name="_checkpoint")
@example(name=".hidden")
@example(name="a/b")
def test_escaped_name_is_one_safe_path_segment(name):
    escaped = layout.escape(name)
    assert escaped
    assert "/" not in escaped
    assert escaped not in (".", "..")
    assert not escaped.startswith((".", "_"))
    # ASCII is limited to unreserved characters and escapes; other text stays readable, but never
    # control characters, separators or whitespace of any script.
    assert all(re.fullmatch(r"[A-Za-z0-9%._~-]", c) for c in escaped if c.isascii())
    assert not any(unicodedata.category(c)[0] in "CZ" for c in escaped)
    assert len(escaped.encode()) <= 255 or len(name.encode()) > 85


def test_a_long_non_ascii_name_fits_one_path_segment():
    name = "注文" * 42  # 252 bytes of UTF-8: close to RabbitMQ's limit of 255
    assert len(layout.escape(name).encode()) == 252


@given(a=names, b=names)
def test_different_names_escape_differently(a, b):
    if a != b:
        assert layout.escape(a) != layout.escape(b)


def test_a_lone_nul_name_round_trips_and_differs_from_the_empty_name():
    assert layout.escape("\x00") != layout.escape("")
    assert layout.unescape(layout.escape("\x00")) == "\x00"


@given(
    prefix=prefixes,
    source=sources,
    first_seq=st.integers(1, 10**19),
    hour=HOURS,
    within=st.integers(0, HOUR_NS - 1),
)
def test_segment_key_parses_back_to_its_source_sequence_and_hour(prefix, source, first_seq, hour, within):
    captured = hour * HOUR_NS + within
    key = layout.segment_key(prefix, source, first_seq, captured)
    parsed = layout.parse_segment_key(prefix, key)
    assert parsed is not None
    assert parsed.key == key
    assert parsed.source == source
    assert parsed.first_seq == first_seq
    assert parsed.hour_ns == hour * HOUR_NS
    assert key.startswith(layout.source_prefix(prefix, source))
    assert layout.parse_source_prefix(prefix, key) == source


@given(prefix=prefixes, source=sources)
def test_checkpoint_key_is_not_a_segment_but_lies_in_its_source(prefix, source):
    key = layout.checkpoint_key(prefix, source)
    assert layout.parse_segment_key(prefix, key) is None
    assert layout.parse_source_prefix(prefix, key) == source


def test_keys_that_are_not_segments_parse_to_none():
    for key in [
        "%2F/queue/q/2024/05/01/10/not-a-segment.wseg",
        "%2F/exchange/q/2024/05/01/10/00000000000000000001.wseg",
        "%2F/queue/q/2024/13/01/10/00000000000000000001.wseg",
        "%2F/queue/q/2024/05/01/00000000000000000001.wseg",
        "_definitions/2024/05/01/00000000000000000001.json.zst",
    ]:
        assert layout.parse_segment_key("", key) is None


@given(hour=HOURS, within=st.integers(0, HOUR_NS - 1))
@example(hour=475_000, within=0)
@example(hour=475_000, within=HOUR_NS - 1)
def test_partition_is_the_utc_hour_of_the_capture_time(hour, within):
    captured = hour * HOUR_NS + within
    assert layout.partition(captured) == f"{utc_hour(captured):%Y/%m/%d/%H}"
    assert layout.partition_start_ns(captured) == hour * HOUR_NS


def test_partition_of_the_last_nanosecond_of_an_hour_is_that_hour():
    boundary = 475_000 * HOUR_NS  # 2024-03-09T16:00:00Z
    assert layout.partition(boundary - 1) == "2024/03/09/15"  # a float of seconds would round into 16h
    assert layout.partition(boundary - 1_000_000_000) == "2024/03/09/15"
    assert layout.partition(boundary) == "2024/03/09/16"


def test_definitions_key_is_dated_by_capture_day():
    captured = int(dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
    key = layout.definitions_key("arch", captured)
    assert key == f"arch/_definitions/2024/05/01/{captured:020d}.json.zst"
