"""AMQP 0-9-1 frame encoding and method decoding: pure functions over bytes.

pamqp is the codec for every method; the few that sit on the per-message hot path (basic.deliver,
basic.ack/nack from confirms, basic.publish, basic.ack to the broker, content header and body) are
also encoded and decoded here by hand with precompiled structs, because pamqp's generic unmarshal
builds a command object field by field and would dominate a consumer's CPU time.

pamqp is our codec, not the judge of names: its commands validate on construction and on marshal
(a client-side regex for queue and exchange names, 127 characters for exchanges and vhosts) and so
refuse names RabbitMQ accepts, such as `orders eu/ü.1`. Methods we send are therefore built with
`method()` and encoded by `encode_method()`, neither of which calls `validate()`; the one check left
is the wire's own, a short string of at most 255 bytes (`ShortStringTooLong`). Decoding is pamqp's
unmarshal, which does not validate.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, TypeVar

from pamqp import base, commands, encode, exceptions

from protocol.errors import FrameError, ShortStringTooLong

M = TypeVar("M", bound=base.Frame)

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_HEADER_SIZE = 7
# frame header (7) + frame end (1): what a body frame costs beyond its payload
FRAME_OVERHEAD = 8
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
# The spec's minimum frame_max: every peer must accept frames this large before tuning.
MIN_FRAME_MAX = 4096

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# class and method ids packed as one big-endian u32, as on the wire
DELIVER_ID = 0x003C003C
DELIVER_HEAD = DELIVER_ID.to_bytes(4, "big")
ACK_ID = 0x003C0050
NACK_ID = 0x003C0078
RETURN_ID = 0x003C0032
GET_OK_ID = 0x003C0047

_frame_head = struct.Struct(">BHI")
_u32 = struct.Struct(">I")
_u64 = struct.Struct(">Q")
_ack = struct.Struct(">BHIHHQB")  # frame head, class, method, tag, bits
_ack_frame_end = b"\xce"
_publish_head = struct.Struct(">BHIHHH")  # frame head, class, method, reserved ticket
_content_header_head = struct.Struct(">BHIHHQ")  # frame head, class, weight, body size
_ack_method = struct.Struct(">QB")
_METHODS: dict[int, type[base.Frame]] = commands.INDEX_MAPPING  # pamqp's literal is typed as dict[int, type]


def unpack_frame_head(data: bytes | bytearray, offset: int) -> tuple[int, int, int]:
    """(frame type, channel, payload size) of the frame starting at `offset`."""
    return _frame_head.unpack_from(data, offset)


def method(cls: type[M], **fields: Any) -> M:
    """A pamqp command holding `fields`, built without pamqp's validation (see the module's docstring)."""
    command = cls()  # every default passes validate(); the fields set below never meet it
    for name, value in fields.items():
        if name not in cls.__slots__:
            raise TypeError(f"{cls.name} has no field {name!r}")
        setattr(command, name, value)
    return command


def encode_method(channel: int, command: base.Frame) -> bytes:
    """A complete method frame for any pamqp command, without pamqp's validate()."""
    payload = _u32.pack(command.index) + encode_arguments(command)
    return _frame_head.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def encode_arguments(command: base.Frame) -> bytes:
    """A method's arguments in field order, as pamqp's marshal lays them out (consecutive bits share
    octets, eight to one), with short strings checked only against the wire's 255-byte limit."""
    out = bytearray()
    bits = -1  # the octet bits are being packed into; -1 while none is open
    position = 0
    for name in command.__slots__:
        kind = command.amqp_type(name)
        value = getattr(command, name)
        if kind == "bit":
            if bits < 0 or position == 8:
                if bits >= 0:
                    out.append(bits)
                bits, position = 0, 0
            if value:
                bits |= 1 << position
            position += 1
            continue
        if bits >= 0:
            out.append(bits)
            bits = -1
        if kind == "shortstr":
            out += encode_shortstr(value or "", field=name, method=command.name)
        else:
            out += encode.by_type("" if value is None and kind == "longstr" else value, kind)
    if bits >= 0:
        out.append(bits)
    return bytes(out)


def decode_method(payload: bytes, channel: int) -> base.Frame:
    """Decode a method frame's payload with pamqp, turning its failures into FrameError."""
    if len(payload) < 4:
        raise FrameError(f"method frame of {len(payload)} bytes has no class and method id", channel=channel)
    method_id = _u32.unpack_from(payload, 0)[0]
    cls: type[base.Frame] | None = _METHODS.get(method_id)
    if cls is None:
        raise FrameError(f"unknown method {method_id >> 16}.{method_id & 0xFFFF}", reply_code=540, channel=channel)
    method = cls()
    try:
        method.unmarshal(payload[4:])
    except (struct.error, ValueError, IndexError, KeyError, UnicodeDecodeError, exceptions.PAMQPException) as err:
        raise FrameError(f"cannot decode {cls.name}: {err}", channel=channel) from err
    return method


def decode_deliver(payload: bytes) -> tuple[str, int, bool, str, str]:
    """basic.deliver arguments: (consumer_tag, delivery_tag, redelivered, exchange, routing_key)."""
    n = payload[4]
    pos = 5 + n
    consumer_tag = payload[5:pos].decode()
    delivery_tag = _u64.unpack_from(payload, pos)[0]
    redelivered = bool(payload[pos + 8] & 1)
    pos += 9
    n = payload[pos]
    exchange = payload[pos + 1 : pos + 1 + n].decode()
    pos += 1 + n
    n = payload[pos]
    routing_key = payload[pos + 1 : pos + 1 + n].decode()
    if pos + 1 + n != len(payload):
        raise ValueError("basic.deliver arguments do not fill the frame")
    return consumer_tag, delivery_tag, redelivered, exchange, routing_key


def decode_confirm(payload: bytes) -> tuple[int, bool]:
    """basic.ack / basic.nack from the broker: (delivery_tag, multiple)."""
    tag, bits = _ack_method.unpack_from(payload, 4)
    return tag, bool(bits & 1)


def encode_ack(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    """basic.ack frame: 21 bytes, no allocation beyond the result."""
    return _ack.pack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, 1 if multiple else 0) + _ack_frame_end


def encode_shortstr(value: str, *, field: str = "short string", method: str | None = None) -> bytes:
    """u8 length + UTF-8 bytes; ShortStringTooLong (naming `field`) beyond 255 bytes."""
    raw = value.encode()
    if len(raw) > 255:
        raise ShortStringTooLong(field, value, method=method)
    return bytes((len(raw),)) + raw


def truncate_shortstr(text: str) -> str:
    """`text` cut to fit a short string (255 bytes of UTF-8), never inside a character: for reply texts
    we compose, which must not fail to encode."""
    raw = text.encode()
    return text if len(raw) <= 255 else raw[:255].decode("utf-8", "ignore")


def encode_content(
    out: bytearray,
    channel: int,
    method_args: bytes,
    raw_properties: bytes,
    body: bytes,
    frame_max: int,
) -> None:
    """Append basic.publish (method args already encoded), content header and body frames to `out`.

    The property bytes go out exactly as given (flags followed by values), which is what lets a message
    archived from one broker be republished byte-identical to another.
    """
    out += _publish_head.pack(FRAME_METHOD, channel, 6 + len(method_args), 60, 40, 0)
    out += method_args
    out += FRAME_END_BYTE
    body_size = len(body)
    out += _content_header_head.pack(FRAME_HEADER, channel, 12 + len(raw_properties), 60, 0, body_size)
    out += raw_properties
    out += FRAME_END_BYTE
    chunk = frame_max - FRAME_OVERHEAD
    if body_size <= chunk:
        if body_size:
            out += _frame_head.pack(FRAME_BODY, channel, body_size)
            out += body
            out += FRAME_END_BYTE
        return
    view = memoryview(body)
    for start in range(0, body_size, chunk):
        piece = view[start : start + chunk]
        out += _frame_head.pack(FRAME_BODY, channel, len(piece))
        out += piece
        out += FRAME_END_BYTE


@functools.lru_cache(maxsize=4096)
def publish_args(exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """basic.publish arguments after the reserved ticket: exchange, routing key, mandatory/immediate bits.

    Cached: a replay or a publisher sends to a handful of exchange and routing key pairs, over and over.
    """
    return (
        encode_shortstr(exchange, field="exchange", method="Basic.Publish")
        + encode_shortstr(routing_key, field="routing_key", method="Basic.Publish")
        + (b"\x01" if mandatory else b"\x00")
    )


def encode_start_ok(client_properties: dict, mechanism: str, response: bytes, locale: str) -> bytes:
    """connection.start-ok, by hand because pamqp encodes a longstr from str only and a SASL response
    (AMQPLAIN's is a binary field table) is bytes."""
    payload = (
        b"\x00\x0a\x00\x0b"
        + encode.field_table(client_properties)
        + encode_shortstr(mechanism)
        + _u32.pack(len(response))
        + response
        + encode_shortstr(locale)
    )
    return _frame_head.pack(FRAME_METHOD, 0, len(payload)) + payload + FRAME_END_BYTE


def content_header_fields(data: bytes, start: int = 0, end: int | None = None) -> tuple[int, int, bytes]:
    """(class_id, body_size, raw property bytes) of the content header payload data[start:end]."""
    end = len(data) if end is None else end
    if end - start < 14:
        raise ValueError(f"content header of {end - start} bytes is shorter than 14")
    class_id = (data[start] << 8) | data[start + 1]
    body_size = _u64.unpack_from(data, start + 4)[0]
    return class_id, body_size, data[start + 12 : end]
