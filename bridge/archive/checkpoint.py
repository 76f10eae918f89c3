"""Per-source checkpoints: the last committed sequence and stream offset, kept in the archive itself.

A checkpoint is written after the segments it covers, so it may lag behind them (a crash between the
two) but never runs ahead; readers of the tail therefore also look at segments after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from bridge.archive import layout
from bridge.archive.record import Source
from bridge.errors import ArchiveCorrupt
from sinks import ObjectNotFound, Sink


@dataclass(frozen=True)
class Checkpoint:
    last_seq: int
    last_offset: int | None
    last_segment: str
    last_captured_ns: int
    written_ns: int

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "format": 1,
                "last_seq": self.last_seq,
                "last_offset": self.last_offset,
                "last_segment": self.last_segment,
                "last_captured_ns": self.last_captured_ns,
                "written_ns": self.written_ns,
            }
        )

    @classmethod
    def decode(cls, data: bytes, key: str) -> Checkpoint:
        try:
            m: dict[str, Any] = msgpack.unpackb(data, raw=False)
            if m.get("format") != 1:
                raise ValueError(f"unsupported checkpoint format {m.get('format')!r}")
            return cls(m["last_seq"], m["last_offset"], m["last_segment"], m["last_captured_ns"], m["written_ns"])
        except (KeyError, TypeError, ValueError, AttributeError, msgpack.UnpackException) as err:
            raise ArchiveCorrupt(f"checkpoint is unreadable: {err}", segment=key) from err


async def read_checkpoint(sink: Sink, prefix: str, source: Source) -> Checkpoint | None:
    key = layout.checkpoint_key(prefix, source)
    try:
        return Checkpoint.decode(await sink.get(key), key)
    except ObjectNotFound:
        return None


async def write_checkpoint(sink: Sink, prefix: str, source: Source, checkpoint: Checkpoint) -> None:
    await sink.put(layout.checkpoint_key(prefix, source), checkpoint.encode())
