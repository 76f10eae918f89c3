"""The broker's definitions (topology) as the archive keeps them: sorted-key JSON in one zstd frame
(docs/FORMAT.md, "Definitions")."""

from __future__ import annotations

import json
from typing import Any

import zstandard

MAX_DEFINITIONS_BYTES = 512 * 1024 * 1024


def encode_definitions(definitions: dict[str, Any]) -> bytes:
    return zstandard.ZstdCompressor(level=9).compress(json.dumps(definitions, sort_keys=True).encode())


def decode_definitions(data: bytes) -> dict[str, Any]:
    return json.loads(zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_DEFINITIONS_BYTES))
