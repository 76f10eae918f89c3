"""A message as it came off the wire, property bytes kept exactly, decoded only on demand.

Keeping the encoded property section of the content header (flags and values) is both the exact way
to preserve every one of the 14 basic properties and the header table with its AMQP types (a decimal
stays a decimal, a byte array stays bytes, a void stays void) and the fastest: nothing is decoded
unless someone asks, and a publisher can send the same bytes back untouched.
"""

from __future__ import annotations

import struct
from typing import Any

from pamqp import commands

from protocol.core.events import Event
from protocol.errors import FrameError

Properties = commands.Basic.Properties

PROPERTY_NAMES: tuple[str, ...] = tuple(Properties.__slots__)

_u16 = struct.Struct(">H")


def decode_properties(raw: bytes) -> Properties:
    """Decode a content header's property section (flag words, then the present values)."""
    flags = 0
    offset = 0
    word = 0
    while True:
        if len(raw) < offset + 2:
            raise FrameError("content header property flags are truncated")
        partial = _u16.unpack_from(raw, offset)[0]
        offset += 2
        flags |= (partial & 0xFFFE) << (16 * word)
        if not partial & 1:
            break
        word += 1
    props = Properties()
    try:
        props.unmarshal(flags, raw[offset:])
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as err:
        raise FrameError(f"cannot decode content header properties: {err}") from err
    return props


def encode_properties(props: Properties | dict[str, Any] | None) -> bytes:
    """Property section bytes for a pamqp Properties object or a dict of its field names."""
    if props is None:
        return b"\x00\x00"
    if isinstance(props, dict):
        unknown = set(props) - set(PROPERTY_NAMES)
        if unknown:
            raise ValueError(f"unknown message properties: {sorted(unknown)}")
        props = Properties(**props)
    return props.marshal()


class Message(Event):
    """One delivered, returned or fetched message.

    `raw_properties` is the property section of the content header exactly as received; `properties`
    decodes it the first time it is read. `channel`, `consumer_tag`, `delivery_tag` and `redelivered`
    describe this delivery; `exchange` and `routing_key` say where it was published.
    """

    __slots__ = (
        "_properties",
        "body",
        "channel",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "raw_properties",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        body: bytes,
        raw_properties: bytes = b"\x00\x00",
        *,
        exchange: str = "",
        routing_key: str = "",
        delivery_tag: int = 0,
        redelivered: bool = False,
        consumer_tag: str = "",
        channel: int = 0,
    ) -> None:
        self.body = body
        self.raw_properties = raw_properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.consumer_tag = consumer_tag
        self.channel = channel
        self._properties: Properties | None = None

    @classmethod
    def build(
        cls,
        body: bytes,
        properties: Properties | dict[str, Any] | None = None,
        *,
        exchange: str = "",
        routing_key: str = "",
    ) -> Message:
        """A message to publish, from decoded properties."""
        return cls(body, encode_properties(properties), exchange=exchange, routing_key=routing_key)

    @property
    def properties(self) -> Properties:
        if self._properties is None:
            self._properties = decode_properties(self.raw_properties)
        return self._properties

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    def __repr__(self) -> str:
        return (
            f"Message(exchange={self.exchange!r}, routing_key={self.routing_key!r}, "
            f"delivery_tag={self.delivery_tag}, body={len(self.body)} bytes)"
        )
