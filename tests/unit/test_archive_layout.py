"""The archive layout: any queue, stream or vhost name maps to one safe key segment of at most 255 bytes
(escaped, or hashed when the escaped form would not fit), no two names share one, segment keys name their
source and first sequence, and partitions are UTC hours of the capture time."""

from __future__ import annotations

import datetime as dt
import hashlib
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


def fit(text: str, limit: int = 255) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (RabbitMQ's limit for a name), never inside a character."""
    return text.encode()[:limit].decode("utf-8", "ignore")


def exactly_255(pieces: list[str]) -> str:
    name, i = "", 0
    while len((name + pieces[i % len(pieces)]).encode()) <= 255:
        name += pieces[i % len(pieces)]
        i += 1
    return name + "x" * (255 - len(name.encode()))


ASCII_255 = exactly_255(["a b/", "c.d "])  # escapes to far more than 255 bytes
MIXED_255 = exactly_255(["orders eu/", "ü", ".1 ", "注文", "🐇"])
names = st.text(max_size=40)
# Any name RabbitMQ allows: UTF-8 up to 255 bytes, long ones often (that is where escaping overflows).
rabbit_names = st.one_of(
    st.text(max_size=40),
    st.text(min_size=80, max_size=255).map(fit),
    st.text(alphabet=" /%.~_aé", min_size=80, max_size=255).map(fit),
)
tricky_names = ["/", ".", "..", " ", "%", "_x", "", "\x00", "a/b", "../etc", ".tmp-1", "%2F", "%00", "~", "日本/キュー"]
long_names = [ASCII_255, MIXED_255, " " * 255, "/" * 255, "%" * 255, "_" + "." * 254, "%~" * 127]
prefixes = st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True), max_size=3).map("/".join)
sources = st.builds(Source, names, st.sampled_from(list(SourceKind)), names)
any_sources = st.builds(Source, rabbit_names, st.sampled_from(list(SourceKind)), rabbit_names)


def utc_hour(captured_ns: int) -> dt.datetime:
    """The UTC hour holding `captured_ns`, by integer arithmetic only."""
    hour = captured_ns // HOUR_NS
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=hour)


def known(prefix: str, source: Source) -> dict[str, Source]:
    """What a reader learns from a hashed directory's `_source` object (reader.py)."""
    return {layout.source_prefix(prefix, source): source}


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


@given(name=rabbit_names)
@example(name=".")
@example(name="..")
@example(name="_checkpoint")
@example(name=".hidden")
@example(name="a/b")
@example(name=ASCII_255)
@example(name="." * 255)
def test_any_name_is_one_safe_path_segment_of_at_most_255_bytes(name):
    segment = layout.path_segment(name)
    assert segment
    assert len(segment.encode()) <= 255
    assert "/" not in segment
    assert segment not in (".", "..")
    assert not segment.startswith((".", "_"))
    # ASCII is limited to unreserved characters and escapes; other text stays readable, but never
    # control characters, separators or whitespace of any script.
    assert all(re.fullmatch(r"[A-Za-z0-9%._~-]", c) for c in segment if c.isascii())
    assert not any(unicodedata.category(c)[0] in "CZ" for c in segment)


@given(name=rabbit_names)
@example(name=ASCII_255)
@example(name=MIXED_255)
def test_a_name_whose_escaped_form_fits_is_stored_escaped_and_round_trips(name):
    escaped = layout.escape(name)
    segment = layout.path_segment(name)
    if len(escaped.encode()) <= 255:
        assert segment == escaped
        assert not layout.is_hashed(segment)
        assert layout.canonical_unescape(segment) == name
    else:
        assert layout.is_hashed(segment)
        with pytest.raises(ValueError):
            layout.canonical_unescape(segment)  # the name is not in the path: readers look it up


@pytest.mark.parametrize("name", long_names, ids=lambda n: repr(n[:12]))
def test_a_name_too_long_escaped_keeps_a_readable_head_and_ends_in_a_hash_of_the_whole(name):
    segment = layout.path_segment(name)
    head, mark, digest = segment.rpartition("%~")
    assert mark and re.fullmatch(r"[0-9a-f]{32}", digest)
    assert layout.escape(name).startswith(head)
    assert len(head.encode()) >= 200  # most of a path segment stays readable
    assert not re.search(r"%[0-9A-F]?$", head)  # an escape is never cut in two
    assert layout.path_segment(name) == segment  # deterministic: the same directory on every run


def test_names_that_share_the_readable_head_get_different_directories():
    a, b = ASCII_255[:-1] + "1", ASCII_255[:-1] + "2"
    assert layout.path_segment(a).rpartition("%~")[0] == layout.path_segment(b).rpartition("%~")[0]
    assert layout.path_segment(a) != layout.path_segment(b)


@given(name=rabbit_names)
@example(name="%~" * 127)
@example(name="a%~0123456789abcdef0123456789abcdef")
def test_escape_never_writes_a_hashed_form(name):
    """So a hashed directory never collides with the directory of a name `escape` wrote."""
    assert not layout.is_hashed(layout.escape(name))


def test_a_long_non_ascii_name_fits_one_path_segment_unhashed():
    name = "注文" * 42  # 252 bytes of UTF-8: close to RabbitMQ's limit of 255
    assert layout.path_segment(name) == name


@given(a=rabbit_names, b=rabbit_names)
@example(a=ASCII_255, b=ASCII_255[:-1] + "y")
@example(a=" " * 255, b=" " * 254)
def test_no_two_names_share_a_directory(a, b):
    if a != b:
        assert layout.path_segment(a) != layout.path_segment(b)


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


@given(prefix=prefixes, source=any_sources, first_seq=st.integers(1, 10**19), hour=HOURS)
def test_any_source_parses_back_from_its_keys_given_what_a_reader_learns_of_hashed_directories(
    prefix, source, first_seq, hour
):
    key = layout.segment_key(prefix, source, first_seq, hour * HOUR_NS)
    hashed = layout.has_hashed_names(source)
    assert layout.hashed_source_dir(prefix, key) == (layout.source_prefix(prefix, source) if hashed else None)
    parsed = layout.parse_segment_key(prefix, key, known(prefix, source))
    assert parsed is not None and parsed.source == source and parsed.first_seq == first_seq
    for other in (layout.checkpoint_key(prefix, source), layout.source_object_key(prefix, source)):
        assert layout.parse_segment_key(prefix, other, known(prefix, source)) is None
        assert layout.parse_source_prefix(prefix, other, known(prefix, source)) == source
    if hashed:  # without the lookup, a hashed directory never passes for some other name
        assert layout.parse_segment_key(prefix, key) is None
        assert layout.parse_source_prefix(prefix, key) is None
    else:
        assert layout.parse_segment_key(prefix, key) == parsed


@pytest.mark.parametrize("name", long_names, ids=lambda n: repr(n[:12]))
def test_a_hashed_vhost_or_name_alone_makes_the_directory_need_its_source_object(name):
    for source in (Source(name, SourceKind.QUEUE, "q"), Source("/", SourceKind.STREAM, name)):
        assert layout.has_hashed_names(source)
        key = layout.source_object_key("arch", source)
        assert key.endswith("/_source")
        assert layout.hashed_source_dir("arch", key) == layout.source_prefix("arch", source)
    assert not layout.has_hashed_names(Source("/", SourceKind.QUEUE, "orders"))


def test_a_known_source_is_only_taken_for_its_own_directory():
    long_one = Source("/", SourceKind.QUEUE, ASCII_255)
    other = Source("/", SourceKind.QUEUE, ASCII_255[:-1] + "z")
    key = layout.segment_key("", other, 1, 0)
    assert layout.parse_segment_key("", key, known("", long_one)) is None


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


def test_the_hashed_form_is_the_one_docs_format_md_specifies():
    name = "a b/" * 63 + "a b"  # FORMAT.md §2's example: 255 bytes
    digest = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
    assert digest == "943982bcf2aa1c1fe3cf962789f69f24"
    assert layout.path_segment(name) == "a%20b%2F" * 27 + "a%20b" + "%~" + digest
