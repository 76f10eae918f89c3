"""The 14 basic properties and header tables: encode_properties / decode_properties round trip, and
the raw bytes re-encode identically (what lets the archive republish a message byte for byte)."""

from __future__ import annotations

import contextlib
import datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.core.message import PROPERTY_NAMES, Message, Properties, decode_properties, encode_properties
from protocol.errors import FrameError

UTC = datetime.UTC

# ---- strategies -----------------------------------------------------------------------------

# a shortstr property must be non-empty (pamqp treats "" as absent) and at most 255 UTF-8 bytes
shortstr = st.text(min_size=1, max_size=60).filter(lambda s: len(s.encode()) <= 255)
timestamps = st.integers(0, 2**32 - 1).map(lambda s: datetime.datetime.fromtimestamp(s, tz=UTC))
decimals = st.builds(lambda m, s: Decimal(m).scaleb(-s), st.integers(-(2**31), 2**31 - 1), st.integers(0, 255))
table_keys = st.text(max_size=20)

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),  # every integer width pamqp picks from (b, s, u, I, i, l)
    st.sampled_from([-128, 127, 128, -32768, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32]),
    st.text(max_size=40),  # long strings
    st.binary(max_size=40).map(bytearray),
    decimals,
    timestamps,
    st.floats(width=32, allow_nan=False),  # 'f' is a 32-bit float on the wire
)
field_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(table_keys, children, max_size=4),
    max_leaves=12,
)
header_tables = st.dictionaries(table_keys, field_values, max_size=6)

property_values = {
    "content_type": shortstr,
    "content_encoding": shortstr,
    "headers": header_tables,
    "delivery_mode": st.sampled_from([1, 2]),
    "priority": st.integers(0, 255),
    "correlation_id": shortstr,
    "reply_to": shortstr,
    "expiration": shortstr,
    "message_id": shortstr,
    "timestamp": timestamps,
    "message_type": shortstr,
    "user_id": shortstr,
    "app_id": shortstr,
}
property_dicts = st.fixed_dictionaries({}, optional=property_values)


# ---- properties -----------------------------------------------------------------------------


def test_property_names_are_the_14_basic_properties():
    assert set(PROPERTY_NAMES) == {*property_values, "cluster_id"}
    assert len(PROPERTY_NAMES) == 14


@settings(max_examples=300, deadline=None)
@given(property_dicts)
def test_properties_round_trip(props):
    raw = encode_properties(props)
    decoded = decode_properties(raw)
    for name in PROPERTY_NAMES:
        assert getattr(decoded, name) == props.get(name, "" if name == "cluster_id" else None), name
    assert decoded == Properties(**props)
    # raw bytes re-encode identically
    assert encode_properties(decoded) == raw
    assert encode_properties(Properties(**props)) == raw


@settings(max_examples=300, deadline=None)
@given(header_tables)
def test_header_tables_round_trip_with_their_types(headers):
    raw = encode_properties({"headers": headers})
    message = Message(b"", raw)
    assert message.headers == headers
    assert encode_properties(message.properties) == raw
    assert equal_types(message.headers, headers)


def equal_types(a: object, b: object) -> bool:
    """Values are equal *and* of the same kind (True is not 1, a bytearray is not a str...)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal_types(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(equal_types(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_nested_table_example():
    headers = {
        "x-death": [
            {
                "count": 3,
                "exchange": "orders",
                "queue": "orders.eu",
                "reason": "rejected",
                "routing-keys": ["eu.created"],
                "time": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            }
        ],
        "price": Decimal("12.50"),
        "blob": bytearray(b"\x00\xff"),
        "flag": False,
        "nothing": None,
        "big": 2**40,
        "neg": -(2**40),
    }
    raw = encode_properties({"headers": headers, "delivery_mode": 2})
    props = decode_properties(raw)
    assert props.headers == headers
    assert props.delivery_mode == 2
    assert encode_properties(props) == raw


def test_no_properties():
    assert encode_properties(None) == b"\x00\x00"
    assert encode_properties({}) == b"\x00\x00"
    assert decode_properties(b"\x00\x00") == Properties()
    assert Message(b"x").properties == Properties()
    assert Message(b"x").headers == {}


def test_flag_bits_follow_the_spec_order():
    assert encode_properties({"content_type": "a"})[:2] == b"\x80\x00"
    assert encode_properties({"headers": {"a": 1}})[:2] == b"\x20\x00"
    assert encode_properties({"delivery_mode": 2}) == b"\x10\x00\x02"
    assert encode_properties({"app_id": "x"}) == b"\x00\x08\x01x"


def test_message_build_encodes_properties():
    message = Message.build(b"hi", {"message_id": "m1"}, exchange="ex", routing_key="rk")
    assert message.raw_properties == encode_properties({"message_id": "m1"})
    assert (message.body, message.exchange, message.routing_key) == (b"hi", "ex", "rk")
    assert message.properties.message_id == "m1"
    assert "2 bytes" in repr(message)


def test_unknown_property_name_is_refused():
    with pytest.raises(ValueError, match="type"):
        encode_properties({"type": "pamqp 4 calls it message_type"})


def test_invalid_delivery_mode_is_refused():
    with pytest.raises(ValueError):
        encode_properties({"delivery_mode": 3})


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00",
        b"\x80\x00",  # content_type flagged, nothing follows
        b"\x00\x01",  # continuation flag with no second flag word
        b"\x20\x00\x00\x00\x00\x10ab",  # header table longer than the data
        b"\x00\x40\x00\x00",  # truncated timestamp
        b"\x20\x00\x00\x00\x00\x03\x01aZ",  # unknown field type 'Z'
    ],
)
def test_undecodable_property_bytes_are_a_frame_error(raw):
    with pytest.raises(FrameError):
        decode_properties(raw)


def test_decoding_is_lazy_and_cached():
    raw = encode_properties({"app_id": "a"})
    message = Message(b"", raw)
    assert message.properties is message.properties
    broken = Message(b"", b"\x80\x00")  # constructing never decodes
    with pytest.raises(FrameError):
        _ = broken.properties


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_property_bytes_decode_or_raise_frame_error(raw):
    with contextlib.suppress(FrameError):
        decode_properties(raw)
