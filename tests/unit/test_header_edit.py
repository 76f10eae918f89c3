"""Removing one header from raw property bytes: the entry goes, every other byte stays as it was.

Replay strips the source broker's `x-delivery-count` this way, so the rest of the message is still
byte-identical to what was archived (a re-encoding would change integer widths and other types).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core.header_table import DELIVERY_COUNT, without_delivery_count, without_header
from protocol.core.message import decode_properties, encode_properties
from protocol.errors import FrameError
from tests.unit.test_properties import field_values, property_dicts, table_keys


def entry(key: str, kind: bytes, value: bytes) -> bytes:
    """One field-table entry as it goes on the wire: short-string key, type octet, value bytes."""
    return bytes((len(key.encode()),)) + key.encode() + kind + value


def table(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack(">I", len(body)) + body


def section(flags: int, *values: bytes) -> bytes:
    return struct.pack(">H", flags) + b"".join(values)


def shortstr(text: str) -> bytes:
    return bytes((len(text),)) + text.encode()


HEADERS, CONTENT_TYPE, CONTENT_ENCODING, DELIVERY_MODE = 1 << 13, 1 << 15, 1 << 14, 1 << 12
COUNT_AS_LONG = entry(DELIVERY_COUNT, b"l", struct.pack(">q", 3))  # how RabbitMQ sends it


def test_a_message_without_headers_comes_back_as_the_same_bytes():
    raw = encode_properties({"content_type": "text/plain", "message_id": "m-1"})
    assert without_delivery_count(raw) is raw


def test_headers_without_the_delivery_count_come_back_as_the_same_bytes():
    raw = encode_properties({"headers": {"a": 1, "b": "two"}, "priority": 3})
    assert without_delivery_count(raw) is raw


def test_the_delivery_count_among_other_headers_is_cut_out_and_nothing_else_changes():
    # Types pamqp would never choose on its own (an unsigned byte, an unsigned short, a 32-bit
    # unsigned, a byte array): a decode and re-encode would change them; the edit must not.
    others = [
        entry("small", b"B", b"\x07"),
        entry("port", b"u", struct.pack(">H", 5672)),
        entry("big", b"i", struct.pack(">I", 2**31)),
        entry("blob", b"x", struct.pack(">I", 3) + b"\x00\x01\x02"),
        entry("when", b"T", struct.pack(">Q", 1_700_000_000)),
        entry("price", b"D", b"\x02" + struct.pack(">i", 1999)),
        entry("nothing", b"V", b""),
    ]
    before, after = b"".join(others[:3]), b"".join(others[3:])
    head = shortstr("application/json") + shortstr("gzip")
    tail = b"\x02"  # delivery mode
    flags = CONTENT_TYPE | CONTENT_ENCODING | HEADERS | DELIVERY_MODE
    raw = section(flags, head, table(before, COUNT_AS_LONG, after), tail)
    assert without_delivery_count(raw) == section(flags, head, table(before, after), tail)


def test_a_table_holding_only_the_delivery_count_goes_with_its_flag():
    raw = encode_properties({"headers": {DELIVERY_COUNT: 4}, "message_id": "m-9", "content_type": "text/plain"})
    assert without_delivery_count(raw) == encode_properties({"message_id": "m-9", "content_type": "text/plain"})
    assert decode_properties(without_delivery_count(raw)).headers is None


def test_every_copy_of_a_repeated_header_is_removed():
    raw = section(HEADERS, table(COUNT_AS_LONG, entry("k", b"t", b"\x01"), COUNT_AS_LONG))
    assert without_delivery_count(raw) == section(HEADERS, table(entry("k", b"t", b"\x01")))


def test_the_name_inside_another_value_is_not_a_header():
    value = b"\x10x-delivery-count"  # the entry's key bytes, inside a long string
    raw = section(HEADERS, table(entry("note", b"S", struct.pack(">I", len(value)) + value)))
    assert without_delivery_count(raw) is raw


def test_a_nested_delivery_count_is_left_alone():
    raw = encode_properties({"headers": {"x-death": [{DELIVERY_COUNT: 1, "queue": "q"}], "k": "v"}})
    assert without_delivery_count(raw) == raw


def test_flag_words_after_the_first_are_kept():
    # A continuation bit on the first word and a second (empty) flag word, as a peer may send.
    raw = section(HEADERS | 1, b"\x00\x00", table(COUNT_AS_LONG, entry("k", b"b", b"\x05")))
    assert without_delivery_count(raw) == section(HEADERS | 1, b"\x00\x00", table(entry("k", b"b", b"\x05")))


def test_any_header_can_be_removed_by_name():
    raw = encode_properties({"headers": {"keep": 1, "drop me": "x"}})
    assert without_header(raw, "drop me") == encode_properties({"headers": {"keep": 1}})


@pytest.mark.parametrize(
    "raw",
    [
        section(HEADERS, b"\x00\x00", COUNT_AS_LONG),  # no room left for the table's size
        section(HEADERS, struct.pack(">I", 50), COUNT_AS_LONG),  # the table claims more than there is
        section(HEADERS, table(entry(DELIVERY_COUNT, b"l", b"\x00\x00"))),  # a value cut short
        section(HEADERS, table(entry(DELIVERY_COUNT, b"?", b""))),  # a type RabbitMQ does not have
    ],
)
def test_malformed_property_bytes_holding_the_name_are_a_frame_error(raw):
    # (bytes that do not hold the name are handed back unread: nothing there to edit)
    with pytest.raises(FrameError):
        without_delivery_count(raw)


@settings(max_examples=300, deadline=None)
@given(
    property_dicts,
    st.dictionaries(table_keys.filter(lambda k: k != DELIVERY_COUNT), field_values, max_size=6),
    st.integers(0, 6),
    st.integers(0, 2**63 - 1),
)
def test_removing_the_delivery_count_equals_never_having_had_it(props, headers, where, count):
    items = list(headers.items())
    with_count = dict([*items[:where], (DELIVERY_COUNT, count), *items[where:]])
    raw = encode_properties({**props, "headers": with_count})
    want = encode_properties({**props, "headers": headers} if headers else {**props, "headers": None})
    assert without_delivery_count(raw) == want
