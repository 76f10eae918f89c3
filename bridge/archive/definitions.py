"""The broker's definitions (topology) as the archive keeps them: sorted-key JSON in one zstd frame
(docs/FORMAT.md, "Definitions")."""

from __future__ import annotations

import json
from typing import Any

import zstandard

from bridge.archive import layout
from sinks import Sink

MAX_DEFINITIONS_BYTES = 512 * 1024 * 1024


def encode_definitions(definitions: dict[str, Any]) -> bytes:
    return zstandard.ZstdCompressor(level=9).compress(json.dumps(definitions, sort_keys=True).encode())


def decode_definitions(data: bytes) -> dict[str, Any]:
    return json.loads(zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DEFINITIONS_BYTES))


async def saved_definitions(sink: Sink, prefix: str = "") -> list[tuple[int, str]]:
    """(when saved, key) of every definitions object, oldest first; the time is the file name's."""
    found = []
    async for info in sink.list(layout.join(prefix, layout.DEFINITIONS) + "/"):
        stem = info.key.rsplit("/", 1)[-1].removesuffix(layout.DEFINITIONS_SUFFIX)
        if stem.isdigit():
            found.append((int(stem), info.key))
    return sorted(found)
