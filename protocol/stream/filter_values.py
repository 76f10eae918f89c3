"""A stream message's filter value (RabbitMQ 3.13+ stream filtering), read from the AMQP 1.0 bytes the
stream stores: only section headers are walked, the body is skipped by its size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FILTER_VALUE_KEY = "x-stream-filter-value"  # the message annotation RabbitMQ stores an AMQP publisher's value in

MESSAGE_ANNOTATIONS, PROPERTIES, APPLICATION_PROPERTIES = "message-annotations", "properties", "application-properties"
# The AMQP 1.0 properties section is a list; its fields in order.
PROPERTY_FIELDS = (
    "message-id",
    "user-id",
    "to",
    "subject",
    "reply-to",
    "correlation-id",
    "content-type",
    "content-encoding",
    "absolute-expiry-time",
    "creation-time",
    "group-id",
    "group-sequence",
    "reply-to-group-id",
)
_SECTION_CODES = {MESSAGE_ANNOTATIONS: 0x72, PROPERTIES: 0x73, APPLICATION_PROPERTIES: 0x74}


@dataclass(frozen=True)
class FilterValueSource:
    """Where in a stored message its filter value is: `section.key`, e.g. `application-properties.region`.

    Publishers over AMQP (0-9-1 header or 1.0 annotation) leave the value in the message annotation
    `x-stream-filter-value`; stream-protocol publishers give it beside the message, and their extractor
    usually takes it from an application property or the subject, which this names.
    """

    section: str
    key: str

    @classmethod
    def parse(cls, text: str) -> FilterValueSource:
        section, _, key = text.partition(".")
        if section not in _SECTION_CODES or not key:
            raise ValueError(
                f"{text!r}: expected application-properties.KEY, message-annotations.KEY or properties.FIELD"
            )
        if section == PROPERTIES and key not in PROPERTY_FIELDS:
            raise ValueError(f"{text!r}: the AMQP 1.0 properties are {', '.join(PROPERTY_FIELDS)}")
        return cls(section, key)

    def __str__(self) -> str:
        return f"{self.section}.{self.key}"


ANNOTATION = FilterValueSource(MESSAGE_ANNOTATIONS, FILTER_VALUE_KEY)


def stream_filter_value(message: bytes, source: FilterValueSource | None = None) -> str | None:
    """The filter value of a message as a stream stores it (AMQP 1.0 bytes): the annotation RabbitMQ
    filtered on, where present, else what `source` names; None if neither holds a string or a number.

    Only section headers are read; the body is skipped by its size. Bytes that are not an AMQP 1.0
    message (a stream-protocol publisher may store anything) have no filter value.
    """
    try:
        value = _find(message, ANNOTATION)
        if value is None and source is not None and source != ANNOTATION:
            value = _find(message, source)
    except (IndexError, struct.error):  # not AMQP 1.0, or cut short
        return None
    return value if value is None or len(value.encode("utf-8")) <= 0xFFFF else None  # the frame's 16-bit size


_u32 = struct.Struct(">I")
_u64 = struct.Struct(">Q")
_i64 = struct.Struct(">q")
# The width of a fixed-size AMQP 1.0 value, by the high nibble of its format code (spec 1.6, "subcategory").
_FIXED_WIDTH = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}
_SYMBOLIC_SECTIONS = {
    b"amqp:header:list": 0x70,
    b"amqp:delivery-annotations:map": 0x71,
    b"amqp:message-annotations:map": 0x72,
    b"amqp:properties:list": 0x73,
    b"amqp:application-properties:map": 0x74,
    b"amqp:data:binary": 0x75,
    b"amqp:amqp-sequence:list": 0x76,
    b"amqp:amqp-value:*": 0x77,
    b"amqp:footer:map": 0x78,
}
_INTEGERS = {0x50: ">B", 0x51: ">b", 0x52: ">B", 0x53: ">B", 0x54: ">b", 0x55: ">b", 0x60: ">H", 0x61: ">h"}
_INTEGERS |= {0x70: ">I", 0x71: ">i", 0x80: ">Q", 0x81: ">q"}


def _find(data: bytes, source: FilterValueSource) -> str | None:
    want = _SECTION_CODES[source.section]
    pos = 0
    while pos < len(data):
        if data[pos] != 0x00:  # every section is a described type
            return None
        code, pos = _descriptor(data, pos + 1)
        if code == want:
            if want == 0x73:
                return _list_field(data, pos, PROPERTY_FIELDS.index(source.key))
            return _map_value(data, pos, source.key)
        if code is None or code > want:  # sections come in their defined order: it is not there
            return None
        pos = _skip(data, pos)
    return None


def _descriptor(data: bytes, pos: int) -> tuple[int | None, int]:
    """A section's descriptor as its numeric code (None for one that is not a section's), and what follows."""
    kind = data[pos]
    if kind == 0x53:
        return data[pos + 1], pos + 2
    if kind == 0x80:
        return _u64.unpack_from(data, pos + 1)[0], pos + 9
    if kind in (0xA3, 0xB3):
        return _SYMBOLIC_SECTIONS.get(_bytes_of(data, pos)), _skip(data, pos)
    return None, _skip(data, pos)


def _skip(data: bytes, pos: int) -> int:
    """The position after the value (format code and all) at `pos`."""
    while data[pos] == 0x00:  # described: the descriptor (a ulong or a symbol, never described), then the value
        if data[pos + 1] == 0x00:
            raise IndexError("a descriptor that is itself described")
        pos = _skip(data, pos + 1)
    code = data[pos]
    width = _FIXED_WIDTH.get(code >> 4)
    if width is not None:
        return pos + 1 + width
    if code >> 4 in (0xA, 0xC, 0xE):  # a one-byte size follows
        end = pos + 2 + data[pos + 1]
    elif code >> 4 in (0xB, 0xD, 0xF):  # a four-byte size follows
        end = pos + 5 + _u32.unpack_from(data, pos + 1)[0]
    else:
        raise IndexError(f"format code {code:#x} is not AMQP 1.0")
    if end > len(data):
        raise IndexError("a value runs past the end of the message")
    return end


def _bytes_of(data: bytes, pos: int) -> bytes:
    """The payload of a binary, string or symbol at `pos`."""
    if data[pos] >> 4 == 0xA:
        return data[pos + 2 : pos + 2 + data[pos + 1]]
    size = _u32.unpack_from(data, pos + 1)[0]
    return data[pos + 5 : pos + 5 + size]


def _compound(data: bytes, pos: int) -> tuple[int, int]:
    """The element count of the list or map at `pos`, and where its first element is."""
    code = data[pos]
    if code == 0x45 or code == 0x40:  # list0, or a null section value
        return 0, pos + 1
    if code in (0xC0, 0xC1):
        return data[pos + 2], pos + 3
    if code in (0xD0, 0xD1):
        return _u32.unpack_from(data, pos + 5)[0], pos + 9
    raise IndexError(f"format code {code:#x} is not a list or a map")


def _map_value(data: bytes, pos: int, key: str) -> str | None:
    count, pos = _compound(data, pos)
    wanted = key.encode("utf-8")
    for _ in range(count // 2):
        is_key = data[pos] in (0xA1, 0xB1, 0xA3, 0xB3) and _bytes_of(data, pos) == wanted
        pos = _skip(data, pos)
        if is_key:
            return _text(data, pos)
        pos = _skip(data, pos)
    return None


def _list_field(data: bytes, pos: int, index: int) -> str | None:
    count, pos = _compound(data, pos)
    if index >= count:
        return None
    for _ in range(index):
        pos = _skip(data, pos)
    return _text(data, pos)


def _text(data: bytes, pos: int) -> str | None:
    """A string, symbol, UTF-8 binary or integer value as text; None for anything else."""
    code = data[pos]
    if code in (0xA1, 0xB1, 0xA3, 0xB3, 0xA0, 0xB0):
        try:
            return _bytes_of(data, pos).decode("utf-8")
        except UnicodeDecodeError:  # a binary that is not text
            return None
    if code in (0x43, 0x44):  # uint0, ulong0
        return "0"
    fmt = _INTEGERS.get(code)
    if fmt is not None:
        return str(struct.unpack_from(fmt, data, pos + 1)[0])
    return None


def creation_time_ms(message: bytes) -> int | None:
    """The creation-time of a stored AMQP 1.0 message's properties (ms since the epoch: the publisher's
    clock), or None where it has none, or the bytes are not AMQP 1.0."""
    try:
        pos = 0
        while pos < len(message):
            if message[pos] != 0x00:
                return None
            code, pos = _descriptor(message, pos + 1)
            if code == _SECTION_CODES[PROPERTIES]:
                count, pos = _compound(message, pos)
                index = PROPERTY_FIELDS.index("creation-time")
                if index >= count:
                    return None
                for _ in range(index):
                    pos = _skip(message, pos)
                return int(_i64.unpack_from(message, pos + 1)[0]) if message[pos] == 0x83 else None
            if code is None or code > _SECTION_CODES[PROPERTIES]:
                return None
            pos = _skip(message, pos)
    except (IndexError, struct.error):
        return None
    return None
