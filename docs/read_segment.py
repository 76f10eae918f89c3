#!/usr/bin/env python3
"""A standalone reader of warren segment files, written from docs/FORMAT.md alone.

    python docs/read_segment.py SEGMENT.wseg             one JSON object per record, in sequence order
    python docs/read_segment.py --summary SEGMENT.wseg   header, footer and block index as one JSON object

It imports only the standard library, `msgpack` and `zstandard` (never warren), and checks everything
FORMAT.md's "Verifying a segment" lists before printing anything: a segment that fails a check prints
no records, one line on stderr naming the byte offset and the problem, and exits with status 5.
Bytes are printed as base64 (standard alphabet, padded). CRC32C is computed in pure Python, so this
is a reference, not a fast path (about 15 MB/s).

Exit status: 0 the segment is sound, 2 bad command line or unreadable file, 5 the segment is damaged
or of an unsupported format version or codec.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

MAGIC = bytes.fromhex("89 57 52 4e 53 45 47 0a")  # "\x89WRNSEG\n"
END_MAGIC = bytes.fromhex("89 57 52 4e 45 4e 44 0a")  # "\x89WRNEND\n"
FORMAT_VERSION = 1
CODEC = "zstd"
PREFIX = struct.Struct(">II")  # header and trailer: u32 length, u32 crc32c
BLOCK_HEADER = struct.Struct(">IIII")  # compressed length, raw length, records, crc32c of compressed bytes
HEADER_FIXED = len(MAGIC) + PREFIX.size  # 16
TRAILER_SIZE = PREFIX.size + len(END_MAGIC)  # 16

EXIT_OK, EXIT_USAGE, EXIT_CORRUPT = 0, 2, 5

# Record keys (FORMAT.md, "Records"): short key -> the name this reader prints it under.
RECORD_KEYS = {
    "k": "kind",
    "s": "seq",
    "c": "captured_ns",
    "b": "body",
    "e": "exchange",
    "r": "routing_key",
    "p": "raw_properties",
    "d": "redelivered",
    "m": "message_id",
    "t": "timestamp",
    "f": "fingerprint",
    "x": "copy_of",
    "y": "possible_copy_of",
    "n": "snapshot",
    "o": "offset",
    "u": "chunk_ts_ms",
}
KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "b": bytes,
    "e": str,
    "r": str,
    "p": bytes,
    "d": bool,
    "m": str,
    "t": int,
    "f": bytes,
    "x": int,
    "y": int,
    "n": int,
    "o": int,
    "u": int,
}
KIND_AMQP091, KIND_STREAM = 0, 1
REQUIRED = {KIND_AMQP091: ("b", "e", "r", "p"), KIND_STREAM: ("b", "o", "u")}
FOOTER_INTS = (
    "records",
    "first_seq",
    "last_seq",
    "first_captured_ns",
    "last_captured_ns",
    "min_time_ns",
    "max_time_ns",
)


# ---- CRC32C (Castagnoli): reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF ---------


def _crc_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes | memoryview) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---- reading ---------------------------------------------------------------------------------


class Corrupt(Exception):
    """The segment is damaged or unsupported: where (byte offset) and what."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"at byte {offset}: {what}")
        self.what = what
        self.offset = offset


@dataclass(frozen=True)
class Block:
    position: int
    length: int
    records: int
    first_seq: int
    min_time_ns: int
    max_time_ns: int


@dataclass
class Segment:
    header: dict[str, Any]
    footer: dict[str, Any]
    blocks: list[Block]
    records: list[dict[str, Any]]


def _unpack(data: bytes | memoryview, what: str, offset: int) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as err:  # ExtraData and UnicodeDecodeError are ValueErrors
        raise Corrupt(f"{what} is not one msgpack value: {err}", offset) from err


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_header(data: bytes) -> tuple[dict[str, Any], int]:
    if len(data) < HEADER_FIXED + TRAILER_SIZE:
        raise Corrupt(f"too short for a segment ({len(data)} bytes)", 0)
    if data[: len(MAGIC)] != MAGIC:
        raise Corrupt("bad magic: not a warren segment", 0)
    length, crc = PREFIX.unpack_from(data, len(MAGIC))
    end = HEADER_FIXED + length
    if end > len(data) - TRAILER_SIZE:
        raise Corrupt(f"header length {length} runs past the end of the segment", len(MAGIC))
    body = data[HEADER_FIXED:end]
    if crc32c(body) != crc:
        raise Corrupt("header CRC32C mismatch", HEADER_FIXED)
    header = _unpack(body, "header", HEADER_FIXED)
    if not isinstance(header, dict):
        raise Corrupt("header is not a msgpack map", HEADER_FIXED)
    if header.get("format") != FORMAT_VERSION:
        raise Corrupt(f"unsupported format version {header.get('format')!r}", HEADER_FIXED)
    if header.get("codec") != CODEC:
        raise Corrupt(f"unsupported codec {header.get('codec')!r}", HEADER_FIXED)
    source = header.get("source")
    if (
        not isinstance(source, dict)
        or not all(isinstance(source.get(k), str) for k in ("vhost", "kind", "name"))
        or source["kind"] not in ("queue", "stream")
    ):
        raise Corrupt(f"header names no valid source: {source!r}", HEADER_FIXED)
    if not _is_int(header.get("first_seq")) or header["first_seq"] < 1:
        raise Corrupt(f"header first_seq is not a positive integer: {header.get('first_seq')!r}", HEADER_FIXED)
    return header, end


def read_footer(data: bytes) -> tuple[dict[str, Any], list[Block], int]:
    size = len(data)
    if data[size - len(END_MAGIC) :] != END_MAGIC:
        raise Corrupt("bad end magic: the segment is truncated or unfinished", size - len(END_MAGIC))
    length, crc = PREFIX.unpack_from(data, size - TRAILER_SIZE)
    footer_at = size - TRAILER_SIZE - length
    if footer_at < HEADER_FIXED:
        raise Corrupt(f"footer length {length} exceeds the segment", size - TRAILER_SIZE)
    body = data[footer_at : size - TRAILER_SIZE]
    if crc32c(body) != crc:
        raise Corrupt("footer CRC32C mismatch", footer_at)
    footer = _unpack(body, "footer", footer_at)
    if not isinstance(footer, dict):
        raise Corrupt("footer is not a msgpack map", footer_at)
    for key in FOOTER_INTS:
        if not _is_int(footer.get(key)):
            raise Corrupt(f"footer {key} is not an integer: {footer.get(key)!r}", footer_at)
    for key in ("first_offset", "last_offset"):
        if key not in footer:
            raise Corrupt(f"footer has no {key}", footer_at)
        if footer[key] is not None and not _is_int(footer[key]):
            raise Corrupt(f"footer {key} is neither nil nor an integer: {footer[key]!r}", footer_at)
    entries = footer.get("blocks")
    if not isinstance(entries, list) or not entries:
        raise Corrupt("footer has no block index", footer_at)
    blocks = []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 6 or not all(_is_int(v) for v in entry):
            raise Corrupt(f"block index entry is not 6 integers: {entry!r}", footer_at)
        blocks.append(Block(*entry))
    return footer, blocks, footer_at


def decompress_block(data: bytes, block: Block) -> tuple[bytes, int]:
    at = block.position
    clen, rlen, count, crc = BLOCK_HEADER.unpack_from(data, at)
    if BLOCK_HEADER.size + clen != block.length:
        raise Corrupt(f"block header says {clen} compressed bytes, the index says {block.length} in all", at)
    if count != block.records or count == 0:
        raise Corrupt(f"block header says {count} records, the index says {block.records}", at)
    compressed = data[at + BLOCK_HEADER.size : at + block.length]
    if crc32c(compressed) != crc:
        raise Corrupt("block CRC32C mismatch", at)
    frame = zstandard.ZstdDecompressor().decompressobj()
    try:
        raw = frame.decompress(compressed)
    except zstandard.ZstdError as err:
        raise Corrupt(f"block is not a zstd frame: {err}", at) from err
    if not frame.eof:
        raise Corrupt("block's zstd frame is incomplete", at)
    if frame.unused_data:
        raise Corrupt(f"{len(frame.unused_data)} bytes follow the block's zstd frame", at)
    if len(raw) != rlen:
        raise Corrupt(f"block decompresses to {len(raw)} bytes, its header says {rlen}", at)
    return raw, count


def check_record(m: Any, at: int) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise Corrupt(f"a record is not a msgpack map: {m!r:.60}", at)
    for key in ("k", "s", "c"):
        if not _is_int(m.get(key)):
            raise Corrupt(f"record key {key!r} is missing or not an integer", at)
    kind = m["k"]
    if kind not in REQUIRED:
        raise Corrupt(f"unknown record kind {kind}", at)
    for key in REQUIRED[kind]:
        if key not in m:
            raise Corrupt(f"record {m['s']}: kind {kind} requires key {key!r}", at)
    for key, expected in KEY_TYPES.items():
        if key in m and (not isinstance(m[key], expected) or (expected is int and isinstance(m[key], bool))):
            raise Corrupt(f"record {m['s']}: key {key!r} holds a {type(m[key]).__name__}", at)
    return m


def read_segment(data: bytes) -> Segment:
    """Parse and verify a whole segment; raises Corrupt naming the first fault."""
    header, first_block_at = read_header(data)
    footer, blocks, footer_at = read_footer(data)
    position = first_block_at
    for block in blocks:
        if block.position != position:
            raise Corrupt(f"block index puts a block at {block.position}, the last one ends at {position}", position)
        if block.length < BLOCK_HEADER.size or position + block.length > footer_at:
            raise Corrupt(f"block of {block.length} bytes does not fit before the footer", position)
        position += block.length
    if position != footer_at:
        raise Corrupt(f"{footer_at - position} bytes between the last block and the footer", position)

    records: list[dict[str, Any]] = []
    expected = header["first_seq"]
    times: list[int] = []
    for block in blocks:
        raw, count = decompress_block(data, block)
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(raw), 1))
        unpacker.feed(raw)
        block_records = []
        try:
            for m in unpacker:
                block_records.append(check_record(m, block.position))
        except (ValueError, msgpack.UnpackException) as err:
            raise Corrupt(f"block holds malformed msgpack: {err}", block.position) from err
        if unpacker.tell() != len(raw):
            raise Corrupt(f"block ends with {len(raw) - unpacker.tell()} bytes of a partial record", block.position)
        if len(block_records) != count:
            raise Corrupt(f"block holds {len(block_records)} records, its header says {count}", block.position)
        if block_records[0]["s"] != block.first_seq:
            first = block_records[0]["s"]
            raise Corrupt(f"block starts at seq {first}, the index says {block.first_seq}", block.position)
        block_times = []
        for m in block_records:
            if m["s"] != expected:
                raise Corrupt(f"record seq {m['s']} where {expected} was expected", block.position)
            expected += 1
            block_times.append(record_time_ns(m))
        if (min(block_times), max(block_times)) != (block.min_time_ns, block.max_time_ns):
            raise Corrupt("block index time range disagrees with the block's records", block.position)
        times += block_times
        records += block_records

    offsets = [m["o"] for m in records if "o" in m]
    derived = {
        "records": len(records),
        "first_seq": records[0]["s"],
        "last_seq": records[-1]["s"],
        "first_captured_ns": records[0]["c"],
        "last_captured_ns": records[-1]["c"],
        "min_time_ns": min(times),
        "max_time_ns": max(times),
        "first_offset": records[0].get("o"),
        "last_offset": offsets[-1] if offsets else None,
    }
    for key, value in derived.items():
        if footer[key] != value:
            raise Corrupt(f"footer {key} is {footer[key]!r}, the records say {value!r}", footer_at)
    return Segment(header, footer, blocks, records)


def record_time_ns(m: dict[str, Any]) -> int:
    """Record time: the stream chunk timestamp when present (ms), else the capture time (ns)."""
    return m["u"] * 1_000_000 if m.get("u") is not None else m["c"]


# ---- printing --------------------------------------------------------------------------------


def _json_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    return v


def record_json(m: dict[str, Any]) -> dict[str, Any]:
    """A record under the names of FORMAT.md; keys this reader does not know are ignored (FORMAT.md)."""
    out = {name: _json_value(m[key]) for key, name in RECORD_KEYS.items() if key in m}
    out["time_ns"] = record_time_ns(m)
    return out


def summary_json(segment: Segment, size: int) -> dict[str, Any]:
    return {
        "size": size,
        "header": _json_value(segment.header),
        "footer": {k: _json_value(v) for k, v in segment.footer.items() if k != "blocks"},
        "blocks": [block.__dict__ for block in segment.blocks],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a warren segment and print its records as JSON lines.")
    parser.add_argument("segment", help="path of a .wseg file")
    parser.add_argument("--summary", action="store_true", help="print header, footer and block index instead")
    args = parser.parse_args(argv)
    try:
        with open(args.segment, "rb") as f:
            data = f.read()
    except OSError as err:
        print(f"read_segment: {args.segment}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        segment = read_segment(data)
    except Corrupt as err:
        print(f"read_segment: {args.segment} {err}", file=sys.stderr)
        return EXIT_CORRUPT
    out = sys.stdout
    try:
        if args.summary:
            out.write(json.dumps(summary_json(segment, len(data))) + "\n")
        else:
            for m in segment.records:
                out.write(json.dumps(record_json(m)) + "\n")
        out.flush()
    except BrokenPipeError:  # `| head`: the reader of our output has gone, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
