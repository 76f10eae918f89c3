"""A stream message's filter value, read from its stored AMQP 1.0 bytes, and the publish v2 frames that
carry it back (RabbitMQ 3.13+ stream filtering)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rstream import AMQPMessage
from rstream._pyamqp.message import Properties
from rstream.encoding import encode_publish
from rstream.schema import Message, Publish

from protocol.stream import (
    PROPERTY_FIELDS,
    FilteredMessage,
    FilterValueSource,
    filter_value_of,
    stream_filter_value,
)

REGION = FilterValueSource.parse("application-properties.region")

# Offset 0 of a stream on RabbitMQ 4.0.5, published by pika with the header x-stream-filter-value: red.
FROM_AMQP_091 = bytes.fromhex(
    "005370c006054240404143005372c14306a315782d73747265616d2d66696c7465722d76616c7565a103726564a30a782d65786368"
    "616e6765a100a30d782d726f7574696e672d6b6579a10766696c742e7331005374c10602a1016e5400005375a00670696b612d30"
)


def amqp(**sections: object) -> bytes:
    return bytes(AMQPMessage(**sections))


def test_the_annotation_rabbitmq_stores_for_an_amqp_0_9_1_publisher_is_the_filter_value():
    assert stream_filter_value(FROM_AMQP_091) == "red"


def test_a_message_without_a_filter_value_has_none():
    assert stream_filter_value(amqp(body=b"x", application_properties={"region": "emea"})) is None
    assert stream_filter_value(FROM_AMQP_091.replace(b"x-stream-filter-value", b"x-stream-filter-other")) is None


def test_an_application_property_is_the_filter_value_when_asked_for():
    message = amqp(body=b"x" * 300, application_properties={"n": 5, "region": "emea"})
    assert stream_filter_value(message, REGION) == "emea"
    assert stream_filter_value(message) is None


def test_the_annotation_wins_over_the_named_place():
    message = amqp(
        body=b"x", message_annotations={"x-stream-filter-value": "grün"}, application_properties={"region": "x"}
    )
    assert stream_filter_value(message, REGION) == "grün"


@pytest.mark.parametrize(("field", "value"), [("subject", "eu"), ("message-id", "7"), ("group-id", "g-1")])
def test_a_property_is_the_filter_value_when_asked_for(field, value):
    message = amqp(body=b"x", properties=Properties(subject="eu", message_id=7, group_id="g-1"))
    assert stream_filter_value(message, FilterValueSource.parse(f"properties.{field}")) == value


def test_long_values_in_32_bit_encodings_are_read():
    value = "v" * 300  # str32, in a map32
    message = amqp(value="body", message_annotations={"x-stream-filter-value": value, "pad": "p" * 300})
    assert stream_filter_value(message) == value


def test_symbolic_section_descriptors_are_read_too():
    annotations = b"\x00\xa3\x1camqp:message-annotations:map" + b"\xc1\x1a\x02\xa3\x15x-stream-filter-value\xa1\x02eu"
    assert stream_filter_value(annotations + b"\x00Su\xa0\x01x") == "eu"


@pytest.mark.parametrize(
    "data",
    [
        *[b"", b"red:1", b"\x00", b"\x00\x53", FROM_AMQP_091[:40], b"\x00\x53\x72\xc1\xff\x02", b"\x00\x53\x72\x0f"],
        b"\x00" * 100_000,  # descriptors all the way down
        b"\x00\x53\x70" + b"\x00\x53\x01" * 100_000 + b"\x40",  # a described value, described, ...
    ],
)
def test_bytes_that_are_not_an_amqp_1_0_message_have_no_filter_value(data):
    assert stream_filter_value(data, REGION) is None


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=300) | st.integers(-(2**31), 2**31 - 1)),
    st.text(min_size=1, max_size=20),
    st.binary(max_size=600),
)
def test_any_application_property_is_found_whatever_precedes_it(properties, key, body):
    message = amqp(body=body, properties=Properties(subject="s"), application_properties=properties)
    want = properties.get(key)
    got = stream_filter_value(message, FilterValueSource("application-properties", key))
    assert got == (None if want is None else str(want))


@pytest.mark.parametrize("text", ["region", "headers.region", "application-properties.", "properties.colour"])
def test_a_place_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError):
        FilterValueSource.parse(text)


def test_every_amqp_1_0_property_can_be_named():
    assert len(PROPERTY_FIELDS) == 13
    assert str(FilterValueSource.parse("properties.reply-to-group-id")) == "properties.reply-to-group-id"


def published(*messages: FilteredMessage) -> list[tuple[int, bytes | None, bytes]]:
    """What a publish v2 frame built by rstream from these messages says: (publishing id, filter value, data)."""
    values = [asyncio.run(filter_value_of(m)) for m in messages]
    frame = Publish(
        publisher_id=1, messages=[Message(m.publishing_id, v, m.data) for m, v in zip(messages, values, strict=True)]
    )
    data = encode_publish(frame, 2)
    assert struct.unpack_from(">HH", data, 4) == (2, 2)  # publish, version 2
    count = struct.unpack_from(">I", data, 9)[0]
    pos, out = 13, []
    for _ in range(count):
        pid, size = struct.unpack_from(">Qh", data, pos)
        pos += 10
        value = None if size == -1 else data[pos : pos + size]
        pos += max(size, 0)
        length = struct.unpack_from(">I", data, pos)[0]
        out.append((pid, value, data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    assert pos == len(data), "the frame holds more than its messages"
    return out


def test_publish_v2_frames_carry_each_value_in_utf_8_and_an_empty_one_for_none():
    # rstream 1.1 writes len(str) as the byte count: the value must be sized in UTF-8 bytes.
    frame = published(
        FilteredMessage(b"a", publishing_id=1, filter_value="grün"),
        FilteredMessage(b"bb", publishing_id=2, filter_value=None),
        FilteredMessage(b"ccc", publishing_id=3, filter_value="red"),
    )
    assert frame == [(1, "grün".encode(), b"a"), (2, b"", b"bb"), (3, b"red", b"ccc")]
