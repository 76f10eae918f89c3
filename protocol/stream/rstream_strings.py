"""rstream's stream-protocol strings, sized in bytes: a correction applied once, before any connection.

The stream protocol sizes a string by its UTF-8 bytes (int16 length, then the bytes). rstream (0.20 to at
least 1.1.1) writes `len(value)`, the number of characters, so any non-ASCII stream name, vhost,
connection name, consumer or producer name makes a frame the broker cannot parse: the connection
hangs until it times out. Queue and stream names may be any UTF-8 (`orders eu/ü.1`), so warren replaces
rstream's encoder for string fields with one that counts bytes, and leaves every other type to rstream.
Decoding is right already (it reads the byte length). Once rstream encodes correctly, nothing is replaced.
"""

from __future__ import annotations

from typing import Any

from rstream import encoding
from rstream.constants import T

MAX_STRING_BYTES = 0xFFFF  # the int16 length prefix


def _encodes_bytes() -> bool:
    return bytes(encoding._encode_field("é", T.string)) == b"\x00\x02\xc3\xa9"


def size_strings_in_bytes() -> None:
    """Make rstream size every string field by its UTF-8 bytes (idempotent; a no-op once rstream does)."""
    if _encodes_bytes():
        return
    encode_other = encoding._encode_field

    def encode_field(value: Any, tp: Any) -> bytes | bytearray:
        if tp is T.string:
            raw = value.encode("utf-8")
            if len(raw) > MAX_STRING_BYTES:
                raise ValueError(f"a stream-protocol string of {len(raw)} bytes exceeds {MAX_STRING_BYTES}")
            return len(raw).to_bytes(2, "big") + raw
        return encode_other(value, tp)  # lists and structs call back into the module's (now this) encoder

    encoding._encode_field = encode_field
