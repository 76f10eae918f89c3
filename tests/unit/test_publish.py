"""Publish encoding: method, content header with the property bytes untouched, body frames within
frame_max; confirm sequence numbers; acks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body, commands, header

from protocol.core import frames
from protocol.core.message import encode_properties
from protocol.errors import ChannelClosed
from tests.unit.peer import Broker, opened, parse, split_raw

FRAME_MAX = 4096
CHUNK = FRAME_MAX - frames.FRAME_OVERHEAD


def published(broker: Broker) -> tuple[commands.Basic.Publish, header.ContentHeader, list[bytes], list[int]]:
    """Parse one publish back with pamqp: method, content header, body payloads, body frame sizes."""
    data = broker.heard_bytes()
    got = parse(data)
    raw = split_raw(data)
    assert len({ch for ch, _ in got}) == 1
    method, content = got[0][1], got[1][1]
    assert isinstance(method, commands.Basic.Publish)
    assert isinstance(content, header.ContentHeader)
    bodies = [f for _, f in got[2:]]
    assert all(isinstance(b, body.ContentBody) for b in bodies)
    return method, content, [b.value for b in bodies], [len(f.payload) + frames.FRAME_OVERHEAD for f in raw[2:]]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17, 100_000])
def test_body_is_split_into_frames_no_larger_than_frame_max(size):
    broker = opened(server_frame_max=FRAME_MAX)
    number = broker.open_channel()
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    raw = encode_properties({"content_type": "application/octet-stream", "delivery_mode": 2})
    broker.conn.publish(number, "archive", "segment.1", payload, raw, mandatory=True)
    method, content, bodies, frame_sizes = published(broker)
    assert (method.exchange, method.routing_key, method.mandatory, method.immediate) == (
        "archive",
        "segment.1",
        True,
        False,
    )
    assert content.body_size == size
    assert content.properties.content_type == "application/octet-stream"
    assert content.properties.delivery_mode == 2
    assert b"".join(bodies) == payload
    assert all(0 < len(b) <= CHUNK for b in bodies)
    assert all(s <= FRAME_MAX for s in frame_sizes)
    assert len(bodies) == -(-size // CHUNK)  # as few frames as possible; none for an empty body


def test_property_bytes_go_out_exactly_as_given():
    broker = opened()
    number = broker.open_channel()
    # a header table with unsorted keys and a double: pamqp would encode it differently
    table = b"\x01z" + b"t\x01" + b"\x01a" + b"d" + b"?\xb9\x99\x99\x99\x99\x99\x9a"
    raw = b"\x20\x00" + len(table).to_bytes(4, "big") + table
    broker.conn.publish(number, "", "q", b"body", raw)
    _, head, _ = split_raw(broker.heard_bytes())
    assert (head.ftype, head.channel) == (frames.FRAME_HEADER, number)
    assert head.payload[12:] == raw
    assert int.from_bytes(head.payload[4:12], "big") == 4


def test_publish_defaults_to_not_mandatory():
    broker = opened()
    number = broker.open_channel()
    broker.conn.publish(number, "ex", "rk", b"x", b"\x00\x00")
    method, _, _, _ = published(broker)
    assert method.mandatory is False


def test_confirm_sequence_numbers_count_from_one_per_channel():
    broker = opened()
    one, two = broker.open_channel(), broker.open_channel()
    assert broker.conn.publish(one, "", "q", b"before confirms", b"\x00\x00") == 0
    broker.heard_bytes()
    broker.enable_confirms(one)
    broker.enable_confirms(two)
    broker.heard_bytes()
    assert [broker.conn.publish(one, "", "q", b"m", b"\x00\x00") for _ in range(5)] == [1, 2, 3, 4, 5]
    assert broker.conn.publish(two, "", "q", b"m", b"\x00\x00") == 1
    assert broker.conn.publish(one, "", "q", b"m", b"\x00\x00") == 6


def test_publish_on_a_closing_or_unknown_channel_is_refused():
    broker = opened()
    number = broker.open_channel()
    broker.conn.close_channel(number)
    with pytest.raises(ChannelClosed):
        broker.conn.publish(number, "", "q", b"x", b"\x00\x00")
    with pytest.raises(ChannelClosed):
        broker.conn.publish(99, "", "q", b"x", b"\x00\x00")


def test_publish_after_the_connection_closed_is_refused():
    broker = opened()
    number = broker.open_channel()
    broker.say(commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0))
    with pytest.raises(ChannelClosed):
        broker.conn.publish(number, "", "q", b"x", b"\x00\x00")


def test_routing_key_longer_than_a_short_string_is_refused():
    broker = opened()
    number = broker.open_channel()
    with pytest.raises(ValueError, match="255"):
        broker.conn.publish(number, "", "k" * 256, b"x", b"\x00\x00")


@pytest.mark.parametrize("multiple", [False, True])
def test_ack_frame(multiple):
    broker = opened()
    number = broker.open_channel()
    broker.conn.ack(number, 2**40 + 3, multiple=multiple)
    ack = broker.heard_one(commands.Basic.Ack, number)
    assert (ack.delivery_tag, ack.multiple) == (2**40 + 3, multiple)


@settings(max_examples=50, deadline=None)
@given(
    frame_max=st.integers(4096, 20000),
    payload=st.binary(max_size=50_000),
    exchange=st.text(max_size=40),
    routing_key=st.text(max_size=60),
    mandatory=st.booleans(),
)
def test_publish_round_trips_through_pamqp(frame_max, payload, exchange, routing_key, mandatory):
    broker = opened(frame_max=frame_max)
    number = broker.open_channel()
    raw = encode_properties({"message_id": "x", "headers": {"k": [1, "two"]}})
    broker.conn.publish(number, exchange, routing_key, payload, raw, mandatory=mandatory)
    method, content, bodies, frame_sizes = published(broker)
    assert (method.exchange, method.routing_key, method.mandatory) == (exchange, routing_key, mandatory)
    assert content.body_size == len(payload)
    assert content.properties.headers == {"k": [1, "two"]}
    assert b"".join(bodies) == payload
    assert all(s <= frame_max for s in frame_sizes)
