"""Editing a content header's header table in place: one entry cut out, or the entries put in name order.

The table is walked entry by entry (each value skipped by its type's size) and only the bytes that
change are rebuilt, so every other header keeps its AMQP type and encoding exactly: decoding and
re-encoding the table would not (pamqp picks its own integer widths).
"""

from __future__ import annotations

import struct

from protocol.errors import FrameError

DELIVERY_COUNT = "x-delivery-count"  # set by quorum queues on redelivery: the source broker's count, not the message's
_DELIVERY_COUNT_ENTRY = bytes((len(DELIVERY_COUNT),)) + DELIVERY_COUNT.encode()  # how its table entry starts

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS = 1 << 15, 1 << 14, 1 << 13  # the first flag word's top bits
# Bytes after the type octet of a field-table value, for the types of fixed size (RabbitMQ's set).
_FIXED_SIZE = {
    t: n for types, n in ((b"tbB", 1), (b"su", 2), (b"Iif", 4), (b"lLdT", 8), (b"D", 5), (b"V", 0)) for t in types
}
_SIZED = frozenset(b"SxAF")  # a 32-bit size, then that many bytes


def without_header(raw: bytes, name: str) -> bytes:
    """`raw` (a property section) without header `name`; every other byte exactly as it was. A table
    left empty goes with its flag, as if the publisher had sent none."""
    key = name.encode()
    if len(key) > 255 or bytes((len(key),)) + key not in raw:
        return raw  # the common case, decided without walking anything
    table = _header_table(raw)
    if table is None:
        return raw
    start, end = table
    kept: list[bytes] = []
    pos = start + 4
    removed = False
    while pos < end:
        entry = pos
        size = raw[pos]
        found = raw[pos + 1 : pos + 1 + size] == key
        pos = _skip_field_value(raw, pos + 1 + size, end)
        if found:
            removed = True
        else:
            kept.append(raw[entry:pos])
    if not removed:
        return raw
    entries = b"".join(kept)
    if entries:
        return raw[:start] + _u32.pack(len(entries)) + entries + raw[end:]
    first = _u16.unpack_from(raw, 0)[0] & ~_HEADERS
    return _u16.pack(first) + raw[2:start] + raw[end:]


def without_delivery_count(raw: bytes) -> bytes:
    """`raw` without the broker's `x-delivery-count` header (see `without_header`)."""
    if _DELIVERY_COUNT_ENTRY not in raw:  # the hot path: most messages were never redelivered
        return raw
    return without_header(raw, DELIVERY_COUNT)


def comparable_properties(raw: bytes) -> bytes:
    """What two deliveries of one message have in common in their property sections, on every RabbitMQ
    version: the header table's entries in name order, without the broker's delivery count, and no
    table at all (nor its flag) when no other entry is left.

    A quorum queue in 3.10 re-encodes the table in name order when it adds `x-delivery-count` to a
    redelivery; RabbitMQ 4 delivers every table in name order. Each entry's bytes stay as they were.
    """
    table = _header_table(raw)
    if table is None:
        return raw
    start, end = table
    entries: list[tuple[bytes, bytes]] = []
    pos = start + 4
    while pos < end:
        entry = pos
        size = raw[pos]
        name = raw[pos + 1 : pos + 1 + size]
        pos = _skip_field_value(raw, pos + 1 + size, end)
        if name != _DELIVERY_COUNT_ENTRY[1:]:
            entries.append((name, raw[entry:pos]))
    if not entries:
        # A table left empty is no table: a message published without headers comes back from a quorum
        # queue with `x-delivery-count` alone, and must look like its first delivery.
        first = _u16.unpack_from(raw, 0)[0] & ~_HEADERS
        return _u16.pack(first) + raw[2:start] + raw[end:]
    entries.sort()
    body = b"".join(entry for _, entry in entries)
    return raw[:start] + _u32.pack(len(body)) + body + raw[end:]


def _header_table(raw: bytes) -> tuple[int, int] | None:
    """Where the header table is in a property section (from its size field to its end), if present."""
    if len(raw) < 2:
        raise FrameError("content header property flags are truncated")
    first = _u16.unpack_from(raw, 0)[0]
    if not first & _HEADERS:
        return None
    pos = 0
    while True:  # the flag words: each but the last has its lowest bit set
        if len(raw) < pos + 2:
            raise FrameError("content header property flags are truncated")
        word = _u16.unpack_from(raw, pos)[0]
        pos += 2
        if not word & 1:
            break
    for flag in (_CONTENT_TYPE, _CONTENT_ENCODING):
        if first & flag:  # a short string before the table
            if pos >= len(raw):
                raise FrameError("content header properties are truncated")
            pos += 1 + raw[pos]
    if pos + 4 > len(raw):
        raise FrameError("content header properties are truncated before the header table")
    end = pos + 4 + _u32.unpack_from(raw, pos)[0]
    if end > len(raw):
        raise FrameError("the header table runs past the end of the content header")
    return pos, end


def _skip_field_value(raw: bytes, pos: int, end: int) -> int:
    """The position after the field value (type octet, then value) at `pos`, which must end by `end`."""
    if pos >= end:
        raise FrameError("a header table entry is truncated")
    kind = raw[pos]
    pos += 1
    fixed = _FIXED_SIZE.get(kind)
    if fixed is not None:
        pos += fixed
    elif kind in _SIZED:
        if pos + 4 > end:
            raise FrameError("a header table entry is truncated")
        pos += 4 + _u32.unpack_from(raw, pos)[0]
    else:
        raise FrameError(f"unknown field type {chr(kind)!r} in the header table")
    if pos > end:
        raise FrameError("a header table entry runs past the end of the table")
    return pos
