"""Content reassembly: deliveries, returns and get-ok, split over frames and reads, interleaved across
channels, with the property bytes kept exactly as the broker sent them."""

from __future__ import annotations

import datetime
import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body, commands
from pamqp import frame as pframe

from protocol.core import frames
from protocol.core.events import Confirm, GetEmpty, GetOk, MethodReceived, Returned
from protocol.core.message import Message, encode_properties
from protocol.errors import FrameError
from tests.unit.peer import content_header, opened


def summary(message: Message) -> tuple:
    return (
        message.channel,
        message.consumer_tag,
        message.delivery_tag,
        message.redelivered,
        message.exchange,
        message.routing_key,
        message.raw_properties,
        message.body,
    )


def test_delivery_split_over_several_body_frames():
    broker = opened()
    number = broker.open_channel()
    raw = encode_properties({"content_type": "application/json", "delivery_mode": 2, "headers": {"n": 1}})
    data = broker.deliver_bytes(
        number,
        [b'{"a": ', b"1, ", b'"b": 2}'],
        raw,
        consumer_tag="amq.ctag-1",
        delivery_tag=42,
        exchange="orders",
        routing_key="eu.created",
        redelivered=True,
    )
    (message,) = broker.say_bytes(data)
    assert isinstance(message, Message)
    assert summary(message) == (number, "amq.ctag-1", 42, True, "orders", "eu.created", raw, b'{"a": 1, "b": 2}')
    assert message.properties.content_type == "application/json"
    assert message.properties.delivery_mode == 2
    assert message.headers == {"n": 1}
    assert broker.heard() == []  # nothing is acknowledged without being asked


def test_nothing_is_emitted_until_the_last_body_frame():
    broker = opened()
    number = broker.open_channel()
    assert broker.say(commands.Basic.Deliver("c", 1, False, "", "q"), channel=number) == []
    assert broker.say_bytes(content_header(6, b"\x00\x00", number)) == []
    assert broker.say(body.ContentBody(b"abc"), channel=number) == []
    (message,) = broker.say(body.ContentBody(b"def"), channel=number)
    assert message.body == b"abcdef"


def test_zero_length_body_has_no_body_frame():
    broker = opened()
    number = broker.open_channel()
    (message,) = broker.say_bytes(broker.deliver_bytes(number, [], delivery_tag=7))
    assert message.body == b""
    assert message.delivery_tag == 7
    # and the channel is ready for the next delivery straight away
    (message,) = broker.say_bytes(broker.deliver_bytes(number, [b"x"], delivery_tag=8))
    assert (message.delivery_tag, message.body) == (8, b"x")


def test_deliveries_interleaved_across_two_channels():
    broker = opened()
    one, two = broker.open_channel(), broker.open_channel()
    props_one = encode_properties({"message_id": "m-1"})
    props_two = encode_properties({"message_id": "m-2", "priority": 5})
    props_three = encode_properties({"app_id": "three"})
    frames_in = [
        pframe.marshal(commands.Basic.Deliver("c1", 1, False, "ex", "one"), one),
        pframe.marshal(commands.Basic.Deliver("c2", 1, False, "ex", "two"), two),
        content_header(0, props_two, two),  # empty body on channel two: complete here
        content_header(7, props_one, one),
        pframe.marshal(body.ContentBody(b"one"), one),
        pframe.marshal(commands.Basic.Deliver("c2", 2, False, "ex", "three"), two),
        content_header(5, props_three, two),
        pframe.marshal(body.ContentBody(b"th"), two),
        pframe.marshal(body.ContentBody(b"-one"), one),  # completes channel one
        pframe.marshal(body.ContentBody(b"ree"), two),  # completes channel two's second
    ]
    events = broker.say_bytes(b"".join(frames_in))
    assert [summary(m) for m in events] == [
        (two, "c2", 1, False, "ex", "two", props_two, b""),
        (one, "c1", 1, False, "ex", "one", props_one, b"one-one"),
        (two, "c2", 2, False, "ex", "three", props_three, b"three"),
    ]
    assert events[0].properties.priority == 5


def test_raw_property_bytes_are_preserved_exactly_even_when_not_canonical():
    """Bytes pamqp would never produce itself (unsorted keys, unsigned byte, double, long-long 'L')
    must come through untouched, because the archive republishes them byte for byte."""
    table = (
        b"\x01z"
        + b"B"
        + b"\xff"  # unsigned byte 255
        + b"\x01a"
        + b"d"
        + struct.pack(">d", 0.1)  # 64-bit double
        + b"\x01m"
        + b"L"
        + struct.pack(">q", -5)
        + b"\x01x"
        + b"x"
        + struct.pack(">I", 3)
        + b"\x00\x01\x02"  # byte array
    )
    raw = struct.pack(">H", 0x2000 | 0x0040) + struct.pack(">I", len(table)) + table + struct.pack(">Q", 1700000000)
    broker = opened()
    number = broker.open_channel()
    (message,) = broker.say_bytes(broker.deliver_bytes(number, [b"payload"], raw))
    assert message.raw_properties == raw
    assert message.headers == {"z": 255, "a": 0.1, "m": -5, "x": bytearray(b"\x00\x01\x02")}
    assert message.properties.timestamp == datetime.datetime.fromtimestamp(1700000000, tz=datetime.UTC)
    # re-encoding the decoded form would NOT be byte-identical: the raw bytes are what must be kept
    assert encode_properties(message.properties) != raw


def test_raw_properties_with_every_basic_property():
    props = {
        "content_type": "text/plain",
        "content_encoding": "gzip",
        "headers": {"x-death": [{"count": 2, "queue": "q"}], "price": Decimal("9.99")},
        "delivery_mode": 2,
        "priority": 9,
        "correlation_id": "corr",
        "reply_to": "amq.rabbitmq.reply-to",
        "expiration": "60000",
        "message_id": "id-1",
        "timestamp": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC),
        "message_type": "order.created",
        "user_id": "guest",
        "app_id": "shop",
    }
    raw = encode_properties(props)
    broker = opened()
    number = broker.open_channel()
    (message,) = broker.say_bytes(broker.deliver_bytes(number, [b"hello"], raw))
    assert message.raw_properties == raw
    for name, value in props.items():
        assert getattr(message.properties, name) == value, name


def test_properties_are_decoded_only_when_read():
    # undecodable property bytes do not stop the delivery; reading them is what fails, typed
    broker = opened()
    number = broker.open_channel()
    raw = b"\x20\x00" + b"\x00\x00\x00\x10ab"  # headers flag, then a table claiming 16 bytes that are not there
    (message,) = broker.say_bytes(broker.deliver_bytes(number, [b"x"], raw))
    assert message.raw_properties == raw
    assert message.body == b"x"
    with pytest.raises(FrameError, match="properties"):
        _ = message.properties


def test_basic_return_carries_reply_and_content():
    broker = opened()
    number = broker.open_channel()
    raw = encode_properties({"message_id": "lost"})
    data = pframe.marshal(commands.Basic.Return(312, "NO_ROUTE", "orders", "nowhere"), number)
    data += content_header(4, raw, number) + pframe.marshal(body.ContentBody(b"lost"), number)
    (event,) = broker.say_bytes(data)
    assert isinstance(event, Returned)
    assert (event.channel, event.reply_code, event.reply_text) == (number, 312, "NO_ROUTE")
    assert (event.message.exchange, event.message.routing_key, event.message.body) == ("orders", "nowhere", b"lost")
    assert event.message.raw_properties == raw


def test_basic_get_ok_and_get_empty():
    broker = opened()
    number = broker.open_channel()
    data = pframe.marshal(commands.Basic.GetOk(5, True, "ex", "rk", 17), number)
    data += content_header(2, b"\x00\x00", number) + pframe.marshal(body.ContentBody(b"hi"), number)
    data += pframe.marshal(commands.Basic.GetEmpty(), number)
    got, empty = broker.say_bytes(data)
    assert isinstance(got, GetOk)
    assert got.message_count == 17
    assert (got.message.delivery_tag, got.message.redelivered, got.message.body) == (5, True, b"hi")
    assert empty == GetEmpty(number)


def test_publisher_confirms_arrive_as_confirm_events():
    broker = opened()
    number = broker.open_channel()
    events = broker.say(
        commands.Basic.Ack(1, False), commands.Basic.Ack(3, True), commands.Basic.Nack(4, False), channel=number
    )
    assert events == [
        Confirm(number, 1, False, True),
        Confirm(number, 3, True, True),
        Confirm(number, 4, False, False),
    ]


def test_replies_to_our_methods_are_method_received():
    broker = opened()
    number = broker.open_channel()
    (event,) = broker.say(commands.Queue.DeclareOk("q", 3, 1), channel=number)
    assert isinstance(event, MethodReceived)
    assert event.channel == number
    assert (event.method.queue, event.method.message_count, event.method.consumer_count) == ("q", 3, 1)


@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    frame_size=st.integers(1, 100),
    cuts=st.lists(st.integers(0, 5000), max_size=8),
)
def test_any_split_of_frames_and_reads_gives_the_same_messages(bodies, frame_size, cuts):
    broker = opened()
    one, two = broker.open_channel(), broker.open_channel()
    data = b""
    for i, payload in enumerate(bodies):
        parts = [payload[at : at + frame_size] for at in range(0, len(payload), frame_size)]
        channel = one if i % 2 == 0 else two
        raw = encode_properties({"message_id": f"m{i}", "headers": {"i": i}})
        data += broker.deliver_bytes(channel, parts, raw, delivery_tag=i + 1)
    events = []
    start = 0
    for cut in sorted({c for c in cuts if c < len(data)}):
        events += broker.say_bytes(data[start:cut])
        start = cut
    events += broker.say_bytes(data[start:])
    assert [(m.delivery_tag, m.body, m.properties.message_id) for m in events] == [
        (i + 1, payload, f"m{i}") for i, payload in enumerate(bodies)
    ]
    assert broker.conn.pending_output == 0


def test_byte_at_a_time():
    broker = opened()
    number = broker.open_channel()
    data = broker.deliver_bytes(number, [b"hello ", b"world"], encode_properties({"app_id": "a"}))
    events = []
    for i in range(len(data)):
        events += broker.say_bytes(data[i : i + 1])
    (message,) = events
    assert message.body == b"hello world"
    assert message.properties.app_id == "a"


def _deliver_frames(
    channel: int, parts: list[bytes], raw: bytes, tag: int, exchange: str, key: str, again: bool
) -> bytes:
    deliver = frames.method(
        commands.Basic.Deliver,
        consumer_tag="ctag",
        delivery_tag=tag,
        redelivered=again,
        exchange=exchange,
        routing_key=key,
    )
    data = frames.encode_method(channel, deliver)
    data += content_header(sum(len(p) for p in parts), raw, channel)
    for part in parts:
        data += pframe.marshal(body.ContentBody(part), channel)
    return data


names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(lambda s: len(s.encode()) <= 255)


@settings(max_examples=80, deadline=None)
@given(
    deliveries=st.lists(
        st.tuples(st.binary(max_size=400), st.integers(1, 500), names, names, st.booleans(), st.integers(1, 2)),
        min_size=1,
        max_size=6,
    )
)
def test_a_read_of_whole_deliveries_gives_what_frame_by_frame_parsing_gives(deliveries):
    # A read holding whole deliveries takes each in one step (ChannelState.take_delivery); a read of
    # one byte never does. Both must give the same messages, for any names, sizes and channels.
    def parsed(whole: bool) -> list[tuple]:
        broker = opened()
        channels = [broker.open_channel(), broker.open_channel()]
        data = b""
        for tag, (payload, frame_size, exchange, key, again, which) in enumerate(deliveries, 1):
            parts = [payload[at : at + frame_size] for at in range(0, len(payload), frame_size)]
            raw = encode_properties({"message_id": f"m{tag}", "headers": {"n": tag}})
            data += _deliver_frames(channels[which - 1], parts, raw, tag, exchange, key, again)
        if whole:
            return [summary(m) for m in broker.say_bytes(data)]
        return [summary(m) for i in range(len(data)) for m in broker.say_bytes(data[i : i + 1])]

    assert parsed(whole=True) == parsed(whole=False)
    assert [s[2] for s in parsed(whole=True)] == list(range(1, len(deliveries) + 1))


@pytest.mark.parametrize(
    "fault, reason",
    [
        (lambda ch: content_header(3, b"\x00\x00", ch, class_id=50), "content header for class 50"),
        (lambda ch: content_header(3, b"\x00\x00", ch) + pframe.marshal(body.ContentBody(b"abcd"), ch), "exceeds"),
        (lambda ch: pframe.marshal(commands.Basic.Ack(1), ch), "method frame arrived while content was still expected"),
        (
            lambda ch: content_header(131072, b"\x00\x00", ch) + pframe.marshal(body.ContentBody(bytes(131072)), ch),
            "exceeds the negotiated frame_max",
        ),
    ],
)
def test_a_broken_delivery_in_a_whole_read_is_refused_as_frame_by_frame(fault, reason):
    broker = opened()
    number = broker.open_channel()
    deliver = frames.encode_method(number, frames.method(commands.Basic.Deliver, consumer_tag="c", delivery_tag=1))
    data = deliver + fault(number) + broker.deliver_bytes(number, [b"next"], delivery_tag=2)
    with pytest.raises(FrameError, match=reason):
        broker.say_bytes(data)
    assert b"\x00\x0a\x00\x32" in broker.heard_bytes()  # connection.close, telling the broker why
