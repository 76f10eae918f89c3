"""The `_source` object: the real vhost and name of a source whose directory holds a hashed name.

A name whose escaped form does not fit one path segment is stored under a hashed segment (layout.py),
which readers cannot turn back into the name. The writer therefore records the source, once, in its
directory before anything else; readers take it from there (or, if it is missing, from the header of
any of the source's segments, which always names the source).
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack

from bridge.archive import layout
from bridge.archive.record import Source
from bridge.errors import ArchiveCorrupt
from sinks import ObjectExists, ObjectNotFound, Sink

log = logging.getLogger("warren.archive")


def encode_source_object(source: Source) -> bytes:
    return msgpack.packb({"format": 1, **source.to_map()})


def decode_source_object(data: bytes, key: str) -> Source:
    try:
        m: dict[str, Any] = msgpack.unpackb(data, raw=False)
        if m.get("format") != 1:
            raise ValueError(f"unsupported source object format {m.get('format')!r}")
        source = Source.from_map(m)
        if not (isinstance(source.vhost, str) and isinstance(source.name, str)):
            raise TypeError("vhost and name must be strings")
        return source
    except (KeyError, TypeError, ValueError, AttributeError, msgpack.UnpackException) as err:
        raise ArchiveCorrupt(f"source object is unreadable: {err}", segment=key) from err


async def read_source_object(sink: Sink, key: str) -> Source | None:
    """The source `key` names; None if there is no such object."""
    try:
        return decode_source_object(await sink.get(key), key)
    except ObjectNotFound:
        return None


async def write_source_object(sink: Sink, prefix: str, source: Source) -> None:
    """Record `source` in its directory, unless it already is; a damaged record is rewritten, one that
    names another source is refused (ArchiveCorrupt): two sources never share a directory."""
    key = layout.source_object_key(prefix, source)
    data = encode_source_object(source)
    try:
        await sink.put(key, data, if_absent=True)
        return
    except ObjectExists:
        pass
    try:
        existing = await read_source_object(sink, key)
    except ArchiveCorrupt as err:
        log.warning("rewriting a damaged source object", extra={"key": key, "reason": err.what})
        existing = None
    if existing is None:
        await sink.put(key, data)
    elif existing != source:
        raise ArchiveCorrupt(f"names {existing}, not {source}: the directory belongs to another source", segment=key)
