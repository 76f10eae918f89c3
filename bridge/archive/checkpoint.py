"""Per-source checkpoints: the last committed sequence and stream offset, kept in the archive itself.

A checkpoint is written after the segments it covers, so it may lag behind them (a crash between the
two) but never runs ahead; readers of the tail therefore also look at segments after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.archive import layout
from bridge.archive.record import Source
from bridge.archive.small_object import decode_object, encode_object, read_object
from sinks import Sink


@dataclass(frozen=True)
class Checkpoint:
    last_seq: int
    last_offset: int | None
    last_segment: str
    last_captured_ns: int
    written_ns: int

    def encode(self) -> bytes:
        return encode_object(
            {
                "last_seq": self.last_seq,
                "last_offset": self.last_offset,
                "last_segment": self.last_segment,
                "last_captured_ns": self.last_captured_ns,
                "written_ns": self.written_ns,
            }
        )

    @classmethod
    def decode(cls, data: bytes, key: str) -> Checkpoint:
        return decode_object(data, key, "checkpoint", cls._from_map)

    @classmethod
    def _from_map(cls, m: dict[str, Any]) -> Checkpoint:
        return cls(m["last_seq"], m["last_offset"], m["last_segment"], m["last_captured_ns"], m["written_ns"])


async def read_checkpoint(sink: Sink, prefix: str, source: Source) -> Checkpoint | None:
    return await read_object(sink, layout.checkpoint_key(prefix, source), "checkpoint", Checkpoint._from_map)


async def write_checkpoint(sink: Sink, prefix: str, source: Source, checkpoint: Checkpoint) -> None:
    await sink.put(layout.checkpoint_key(prefix, source), checkpoint.encode())
