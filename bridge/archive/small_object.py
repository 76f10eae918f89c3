"""The archive's small per-source objects (checkpoint, retention mark): a bare msgpack map with a
`format` number, no magic, no CRC; read whole, and absent until first written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgpack

from bridge.errors import ArchiveCorrupt
from sinks import ObjectNotFound, Sink

T = TypeVar("T")
FORMAT = 1


def encode_object(fields: dict[str, Any]) -> bytes:
    return msgpack.packb({"format": FORMAT, **fields})


def decode_object(data: bytes, key: str, what: str, build: Callable[[dict[str, Any]], T]) -> T:
    """`build` of the map in `data`; anything unreadable, of another format or missing a field is an
    ArchiveCorrupt naming `what` and the key."""
    try:
        m = msgpack.unpackb(data, raw=False)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ValueError(f"unsupported format {m.get('format') if isinstance(m, dict) else m!r}")
        return build(m)
    except (KeyError, TypeError, ValueError, AttributeError, msgpack.UnpackException) as err:
        raise ArchiveCorrupt(f"{what} is unreadable: {err}", segment=key) from err


async def read_object(sink: Sink, key: str, what: str, build: Callable[[dict[str, Any]], T]) -> T | None:
    try:
        data = await sink.get(key)
    except ObjectNotFound:
        return None
    return decode_object(data, key, what, build)
