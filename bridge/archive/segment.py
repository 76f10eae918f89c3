"""The segment file: header, zstd blocks of msgpack records each with a CRC32C, footer index, trailer.

Byte layout (docs/FORMAT.md, "Segments"); all integers big-endian:

    header   MAGIC | u32 length | u32 crc32c | msgpack map (format, source, codec, first_seq, ...)
    block*   u32 compressed length | u32 raw length | u32 records | u32 crc32c of the compressed bytes
             | zstd frame holding the records' msgpack maps back to back
    footer   msgpack map: counts, first/last seq, times and offsets, and one index entry per block
    trailer  u32 footer length | u32 crc32c of the footer | END_MAGIC     (16 bytes, fixed)

A reader reads the trailer, then the footer, and can pick the blocks it needs without reading the
rest; every byte of the file is covered by a CRC, and the footer's block index is checked against the
block headers, so a flipped bit or a truncation is found, never decoded as data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import google_crc32c
import msgpack
import zstandard

from bridge.archive.record import (
    K_BODY,
    K_CAPTURED,
    K_CHUNK_TS,
    K_COPY_OF,
    K_KIND,
    K_OFFSET,
    K_POSSIBLE_COPY_OF,
    K_SEQ,
    K_SNAPSHOT,
    CopyMark,
    Record,
    RecordKind,
    Source,
    record_from_map,
)
from bridge.errors import ArchiveCorrupt

MAGIC = b"\x89WRNSEG\n"  # PNG-style: a high bit and a newline catch 7-bit and text-mode transfers
END_MAGIC = b"\x89WRNEND\n"
FORMAT_VERSION = 1
CODEC = "zstd"
SUFFIX = ".wseg"

_prefix = struct.Struct(">II")  # header and footer: length, crc32c
_block = struct.Struct(">IIII")  # compressed length, raw length, records, crc32c
TRAILER_SIZE = _prefix.size + len(END_MAGIC)
HEADER_FIXED = len(MAGIC) + _prefix.size

DEFAULT_BLOCK_BYTES = 1 << 20
DEFAULT_LEVEL = 3


def crc32c(data: bytes | memoryview) -> int:
    return google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)


@dataclass(frozen=True)
class BlockEntry:
    position: int  # of the block header, from the start of the file
    length: int  # block header plus compressed bytes
    records: int
    first_seq: int
    min_time_ns: int
    max_time_ns: int

    def to_list(self) -> list[int]:
        return [self.position, self.length, self.records, self.first_seq, self.min_time_ns, self.max_time_ns]


@dataclass(frozen=True)
class SegmentIndex:
    """What the footer says about a segment: enough to choose it, or skip it, for a point in time."""

    source: Source
    records: int
    first_seq: int
    last_seq: int
    first_captured_ns: int
    last_captured_ns: int
    min_time_ns: int
    max_time_ns: int
    first_offset: int | None
    last_offset: int | None
    blocks: tuple[BlockEntry, ...]
    size: int
    copies: int = 0  # records the archiver proved copies of earlier ones (replay skips them)
    possible_copies: int = 0  # redelivered records with an earlier record's content, unproven (replay keeps them)
    snapshot: int | None = None  # the snapshot run the records were read in, if they were


@dataclass
class _Stats:
    records: int = 0
    first_seq: int = -1
    last_seq: int = -1
    first_captured_ns: int = 0
    last_captured_ns: int = 0
    min_time_ns: int = 0
    max_time_ns: int = 0
    first_offset: int | None = None
    last_offset: int | None = None
    copies: int = 0
    possible_copies: int = 0
    snapshot: int | None = None

    def add(self, m: dict[str, Any]) -> None:
        seq, captured = m[K_SEQ], m[K_CAPTURED]
        chunk_ts = m.get(K_CHUNK_TS)
        time_ns = captured if chunk_ts is None else chunk_ts * 1_000_000
        if self.records == 0:
            self.first_seq, self.first_captured_ns = seq, captured
            self.min_time_ns = self.max_time_ns = time_ns
            self.first_offset = m.get(K_OFFSET)
        else:
            self.min_time_ns = min(self.min_time_ns, time_ns)
            self.max_time_ns = max(self.max_time_ns, time_ns)
        self.records += 1
        self.last_seq, self.last_captured_ns = seq, captured
        offset = m.get(K_OFFSET)
        if offset is not None:
            self.last_offset = offset
        self.copies += K_COPY_OF in m
        self.possible_copies += K_POSSIBLE_COPY_OF in m
        snapshot = m.get(K_SNAPSHOT)
        if snapshot is not None:
            self.snapshot = snapshot

    def add_captured(self, seq: int, captured_ns: int, mark: CopyMark | None, snapshot: int | None) -> None:
        """`add` for a queue record, told its fields instead of looking them up: its time is its capture
        time and it has no offset."""
        if self.records == 0:
            self.first_seq, self.first_captured_ns = seq, captured_ns
            self.min_time_ns = self.max_time_ns = captured_ns
        elif captured_ns < self.min_time_ns:
            self.min_time_ns = captured_ns
        elif captured_ns > self.max_time_ns:
            self.max_time_ns = captured_ns
        self.records += 1
        self.last_seq, self.last_captured_ns = seq, captured_ns
        if mark is not None:
            if mark.proven:
                self.copies += 1
            else:
                self.possible_copies += 1
        if snapshot is not None:
            self.snapshot = snapshot

    def add_run(self, first_seq: int, last_seq: int, captured_ns: int, time_ns: int, offsets: tuple[int, int]) -> None:
        """Records first_seq..last_seq at once: one stream chunk's (or the part of it in one block)."""
        if self.records == 0:
            self.first_seq, self.first_captured_ns = first_seq, captured_ns
            self.min_time_ns = self.max_time_ns = time_ns
            self.first_offset = offsets[0]
        else:
            self.min_time_ns = min(self.min_time_ns, time_ns)
            self.max_time_ns = max(self.max_time_ns, time_ns)
        self.records += last_seq - first_seq + 1
        self.last_seq, self.last_captured_ns = last_seq, captured_ns
        self.last_offset = offsets[1]

    @classmethod
    def of(cls, index: SegmentIndex) -> _Stats:
        """A whole segment's statistics, from its footer."""
        return cls(
            records=index.records,
            first_seq=index.first_seq,
            last_seq=index.last_seq,
            first_captured_ns=index.first_captured_ns,
            last_captured_ns=index.last_captured_ns,
            min_time_ns=index.min_time_ns,
            max_time_ns=index.max_time_ns,
            first_offset=index.first_offset,
            last_offset=index.last_offset,
            copies=index.copies,
            possible_copies=index.possible_copies,
            snapshot=index.snapshot,
        )

    def merge(self, later: _Stats) -> _Stats:
        """These records followed by `later`'s."""
        if not later.records:
            return self
        if not self.records:
            return later
        return _Stats(
            records=self.records + later.records,
            first_seq=self.first_seq,
            last_seq=later.last_seq,
            first_captured_ns=self.first_captured_ns,
            last_captured_ns=later.last_captured_ns,
            min_time_ns=min(self.min_time_ns, later.min_time_ns),
            max_time_ns=max(self.max_time_ns, later.max_time_ns),
            first_offset=self.first_offset if self.first_offset is not None else later.first_offset,
            last_offset=later.last_offset if later.last_offset is not None else self.last_offset,
            copies=self.copies + later.copies,
            possible_copies=self.possible_copies + later.possible_copies,
            snapshot=later.snapshot if later.snapshot is not None else self.snapshot,
        )


class SegmentBuilder:
    """Builds one segment in memory from record maps; `finish()` returns the file's bytes.

    Records must come in sequence order, one source per segment. Blocks are compressed as they fill,
    so memory holds the compressed segment plus at most one raw block.
    """

    def __init__(
        self,
        source: Source,
        *,
        created_ns: int,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        level: int = DEFAULT_LEVEL,
        compressor: zstandard.ZstdCompressor | None = None,
    ) -> None:
        self.source = source
        self.created_ns = created_ns
        self._block_bytes = block_bytes
        self._packer = msgpack.Packer(use_bin_type=True)
        # A writer passes the one it keeps: making a compression context costs about as much as
        # compressing a small segment (~40 us of ~95 for 250 records), and small segments are many.
        self._compressor = compressor or zstandard.ZstdCompressor(level=level)
        self._blocks: list[bytes] = []
        self._index: list[BlockEntry] = []
        self._raw = bytearray()
        self._block_stats = _Stats()
        self._closed_stats = _Stats()  # of the finished blocks: each record is counted once, in its block
        self._header: bytes | None = None
        self._written = 0  # bytes of header and finished blocks

    @property
    def records(self) -> int:
        return self._closed_stats.records + self._block_stats.records

    @property
    def stats(self) -> _Stats:
        return self._closed_stats.merge(self._block_stats)

    @property
    def size(self) -> int:
        """Bytes the segment would take if finished now, counting the open block uncompressed."""
        return self._written + len(self._raw)

    def add(self, record: dict[str, Any]) -> None:
        self._pack(record, record[K_SEQ])
        self._block_stats.add(record)
        if len(self._raw) >= self._block_bytes:
            self._close_block()

    def add_queue_record(
        self, record: dict[str, Any], seq: int, captured_ns: int, mark: CopyMark | None, snapshot: int | None
    ) -> None:
        """`add` for an `amqp_record_map` of these fields, the hot path of queue archiving: the statistics
        are kept from the arguments, not read back out of the map."""
        self._pack(record, seq)
        self._block_stats.add_captured(seq, captured_ns, mark, snapshot)
        if len(self._raw) >= self._block_bytes:
            self._close_block()

    def _pack(self, record: dict[str, Any], seq: int) -> None:
        if self._header is None:
            self._header = self._encode_header(seq)
            self._written = len(self._header)
        self._raw += self._packer.pack(record)

    def add_stream_chunk(
        self,
        first_seq: int,
        captured_ns: int,
        chunk_ts_ms: int,
        chunk: Sequence[tuple[int, bytes]],
        start: int,
        stop: int,
        max_bytes: int,
    ) -> int:
        """Records for `chunk[start:stop]` (a stream chunk's (offset, message) pairs), numbered from
        `first_seq`, in one pass: the same bytes as `add(stream_record_map(...))` for each, without a map
        and a statistics update per message. Stops early once the segment reaches `max_bytes`; returns
        how many it added."""
        if start >= stop:
            return 0
        if self._header is None:
            self._header = self._encode_header(first_seq)
            self._written = len(self._header)
        record: dict[str, Any] = {
            K_KIND: RecordKind.STREAM,
            K_SEQ: first_seq,
            K_CAPTURED: captured_ns,
            K_BODY: b"",
            K_OFFSET: 0,
            K_CHUNK_TS: chunk_ts_ms,
        }  # the key order of stream_record_map: msgpack writes a map in insertion order
        time_ns = chunk_ts_ms * 1_000_000
        pack = self._packer.pack
        block_bytes = self._block_bytes
        run_start = i = start
        seq = first_seq
        while i < stop:
            offset, body = chunk[i]
            record[K_SEQ] = seq
            record[K_BODY] = body
            record[K_OFFSET] = offset
            self._raw += pack(record)
            i += 1
            seq += 1
            full = self._written + len(self._raw) >= max_bytes
            if len(self._raw) >= block_bytes or full:
                self._block_stats.add_run(
                    first_seq + run_start - start, seq - 1, captured_ns, time_ns, (chunk[run_start][0], offset)
                )
                run_start = i
                if len(self._raw) >= block_bytes:
                    self._close_block()
                if full:
                    break
        if run_start < i:
            self._block_stats.add_run(
                first_seq + run_start - start, seq - 1, captured_ns, time_ns, (chunk[run_start][0], chunk[i - 1][0])
            )
        return i - start

    def finish(self) -> bytes:
        if self._header is None:
            raise ValueError("an empty segment is never written")
        self._close_block()
        return b"".join([self._header, *self._blocks, encode_footer(self.stats, self._index)])

    def _encode_header(self, first_seq: int) -> bytes:
        return encode_header(self.source, first_seq, self.created_ns)

    def _close_block(self) -> None:
        if not self._raw:
            return
        compressed = self._compressor.compress(self._raw)  # no copy: zstandard reads the buffer
        b = self._block_stats
        block = _block.pack(len(compressed), len(self._raw), b.records, crc32c(compressed)) + compressed
        self._index.append(BlockEntry(self._written, len(block), b.records, b.first_seq, b.min_time_ns, b.max_time_ns))
        self._blocks.append(block)
        self._written += len(block)
        self._raw = bytearray()
        self._closed_stats = self._closed_stats.merge(b)
        self._block_stats = _Stats()


def encode_header(source: Source, first_seq: int, created_ns: int) -> bytes:
    """Magic, the header map's length and CRC, and the map."""
    header = msgpack.packb(
        {
            "format": FORMAT_VERSION,
            "source": source.to_map(),
            "codec": CODEC,
            "first_seq": first_seq,
            "created_ns": created_ns,
            "writer": "warren",
        },
        use_bin_type=True,
    )
    return MAGIC + _prefix.pack(len(header), crc32c(header)) + header


def encode_footer(s: _Stats, index: list[BlockEntry]) -> bytes:
    """The footer map and the trailer after it."""
    footer = msgpack.packb(
        {
            "records": s.records,
            "first_seq": s.first_seq,
            "last_seq": s.last_seq,
            "first_captured_ns": s.first_captured_ns,
            "last_captured_ns": s.last_captured_ns,
            "min_time_ns": s.min_time_ns,
            "max_time_ns": s.max_time_ns,
            "first_offset": s.first_offset,
            "last_offset": s.last_offset,
            "blocks": [entry.to_list() for entry in index],
            **({"copies": s.copies} if s.copies else {}),
            **({"possible_copies": s.possible_copies} if s.possible_copies else {}),
            **({"snapshot": s.snapshot} if s.snapshot is not None else {}),
        },
        use_bin_type=True,
    )
    return footer + _prefix.pack(len(footer), crc32c(footer)) + END_MAGIC


def merge_segments(segments: list[tuple[str, bytes]], created_ns: int) -> bytes:
    """One segment holding every record of `segments` (name, bytes), which must be whole, of one source,
    of one snapshot run (or none) and contiguous in sequence. Their blocks are copied as they are
    (compressed, each CRC checked on the way), so the merge costs no decompression and no re-encoding."""
    if not segments:
        raise ValueError("nothing to merge")
    indexes = [read_index(data, name) for name, data in segments]
    first = indexes[0]
    stats = _Stats()
    blocks: list[bytes] = []
    entries: list[BlockEntry] = []
    header = encode_header(first.source, first.first_seq, created_ns)
    written = len(header)
    for (name, data), index in zip(segments, indexes, strict=True):
        if index.source != first.source or index.snapshot != first.snapshot:
            raise ValueError(f"{name} is of another source or snapshot than {segments[0][0]}")
        if stats.records and index.first_seq != stats.last_seq + 1:
            raise ValueError(f"{name} starts at {index.first_seq}, not right after {stats.last_seq}")
        for entry in index.blocks:
            block = data[entry.position : entry.position + entry.length]
            clen, _, _, crc = _block.unpack_from(block, 0)
            if crc32c(block[_block.size :]) != crc or _block.size + clen != entry.length:
                raise ArchiveCorrupt("block checksum mismatch", segment=name, offset=entry.position)
            blocks.append(block)
            entries.append(replace(entry, position=written))
            written += entry.length
        stats = stats.merge(_Stats.of(index))
    return b"".join([header, *blocks, encode_footer(stats, entries)])


def segment_name(first_seq: int) -> str:
    """Deterministic: a retried upload of the same records lands on the same key."""
    return f"{first_seq:020d}{SUFFIX}"


def compacted_segment_name(first_seq: int, last_seq: int) -> str:
    """A compacted segment's name says the whole run it holds, so that readers know, from a listing, which
    segments it covers (and skip them until compaction has removed them)."""
    return f"{first_seq:020d}-{last_seq:020d}{SUFFIX}"


def seq_range_from_name(name: str) -> tuple[int, int | None] | None:
    """(first seq, last seq of a compacted segment or None) from a segment's name; None if not one."""
    stem = name.rsplit("/", 1)[-1]
    if not stem.endswith(SUFFIX):
        return None
    first, sep, last = stem[: -len(SUFFIX)].partition("-")
    if not first.isdigit() or (sep and not last.isdigit()):
        return None
    return int(first), int(last) if sep else None


def first_seq_from_name(name: str) -> int | None:
    parsed = seq_range_from_name(name)
    return None if parsed is None else parsed[0]


# ---- reading --------------------------------------------------------------------------------


def parse_header(data: bytes, name: str) -> tuple[dict[str, Any], int]:
    """The header map and where the first block starts."""
    if len(data) < HEADER_FIXED:
        raise ArchiveCorrupt(f"too short for a segment header ({len(data)} bytes)", segment=name, offset=0)
    if data[: len(MAGIC)] != MAGIC:
        raise ArchiveCorrupt("not a warren segment (bad magic)", segment=name, offset=0)
    length, crc = _prefix.unpack_from(data, len(MAGIC))
    end = HEADER_FIXED + length
    body = data[HEADER_FIXED:end]
    if len(body) != length or crc32c(body) != crc:
        raise ArchiveCorrupt("header checksum mismatch", segment=name, offset=HEADER_FIXED)
    try:
        header = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as err:
        raise ArchiveCorrupt(f"header is not a msgpack map: {err}", segment=name, offset=HEADER_FIXED) from err
    if not isinstance(header, dict):
        raise ArchiveCorrupt("header is not a msgpack map", segment=name, offset=HEADER_FIXED)
    if header.get("format") != FORMAT_VERSION:
        raise ArchiveCorrupt(f"unsupported format version {header.get('format')!r}", segment=name, offset=0)
    if header.get("codec") != CODEC:
        raise ArchiveCorrupt(f"unsupported codec {header.get('codec')!r}", segment=name, offset=0)
    return header, end


def footer_length(trailer: bytes, name: str, size: int) -> tuple[int, int]:
    """From the last TRAILER_SIZE bytes: the footer's length and crc32c."""
    if len(trailer) < TRAILER_SIZE or trailer[-len(END_MAGIC) :] != END_MAGIC:
        raise ArchiveCorrupt("no segment trailer: the segment is truncated or unfinished", segment=name, offset=size)
    length, crc = _prefix.unpack_from(trailer, len(trailer) - TRAILER_SIZE)
    if length > size - TRAILER_SIZE - HEADER_FIXED:
        raise ArchiveCorrupt(f"footer length {length} exceeds the segment", segment=name, offset=size - TRAILER_SIZE)
    return length, crc


def parse_index(source: Source, footer: bytes, crc: int, name: str, size: int) -> SegmentIndex:
    footer_at = size - TRAILER_SIZE - len(footer)
    if crc32c(footer) != crc:
        raise ArchiveCorrupt("footer checksum mismatch", segment=name, offset=footer_at)
    try:
        f = msgpack.unpackb(footer, raw=False)
        blocks = tuple(BlockEntry(*entry) for entry in f["blocks"])
        return SegmentIndex(
            source=source,
            records=f["records"],
            first_seq=f["first_seq"],
            last_seq=f["last_seq"],
            first_captured_ns=f["first_captured_ns"],
            last_captured_ns=f["last_captured_ns"],
            min_time_ns=f["min_time_ns"],
            max_time_ns=f["max_time_ns"],
            first_offset=f["first_offset"],
            last_offset=f["last_offset"],
            blocks=blocks,
            size=size,
            copies=f.get("copies", 0),
            possible_copies=f.get("possible_copies", 0),
            snapshot=f.get("snapshot"),
        )
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as err:
        raise ArchiveCorrupt(f"footer does not describe a segment: {err}", segment=name, offset=footer_at) from err


def read_index(data: bytes, name: str) -> SegmentIndex:
    """Header and footer of a whole segment held in memory, checked."""
    header, _ = parse_header(data, name)
    length, crc = footer_length(data[-TRAILER_SIZE:], name, len(data))
    footer = data[len(data) - TRAILER_SIZE - length : len(data) - TRAILER_SIZE]
    try:
        source = Source.from_map(header["source"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArchiveCorrupt(f"header names no valid source: {err}", segment=name, offset=HEADER_FIXED) from err
    return parse_index(source, footer, crc, name, len(data))


def decode_block(data: bytes | memoryview, entry: BlockEntry, name: str) -> list[Record]:
    """The records of one block, after checking its header against the index and its CRC."""
    at = entry.position
    raw_block = data[at : at + entry.length]
    if len(raw_block) < _block.size:
        raise ArchiveCorrupt("block header is truncated", segment=name, offset=at)
    clen, rlen, count, crc = _block.unpack_from(raw_block, 0)
    if _block.size + clen != entry.length or count != entry.records:
        raise ArchiveCorrupt("block header disagrees with the footer index", segment=name, offset=at)
    compressed = raw_block[_block.size :]
    if len(compressed) != clen:
        raise ArchiveCorrupt("block is truncated", segment=name, offset=at)
    if crc32c(compressed) != crc:
        raise ArchiveCorrupt("block checksum mismatch", segment=name, offset=at)
    try:
        raw = zstandard.ZstdDecompressor().decompress(bytes(compressed), max_output_size=rlen)
    except zstandard.ZstdError as err:
        raise ArchiveCorrupt(f"block does not decompress: {err}", segment=name, offset=at) from err
    if len(raw) != rlen:
        raise ArchiveCorrupt(f"block holds {len(raw)} bytes, its header says {rlen}", segment=name, offset=at)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(rlen, 1))
    unpacker.feed(raw)
    try:
        records = [record_from_map(m) for m in unpacker]
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as err:
        raise ArchiveCorrupt(f"block holds a malformed record: {err}", segment=name, offset=at) from err
    if len(records) != count:
        raise ArchiveCorrupt(f"block holds {len(records)} records, its header says {count}", segment=name, offset=at)
    return records


def iter_blocks(
    data: bytes, name: str, *, since_ns: int | None = None, until_ns: int | None = None
) -> Iterator[tuple[BlockEntry, list[Record]]]:
    """Each block of a segment with its records, in sequence order, skipping blocks entirely outside
    [since, until] by the footer index; a replay handles a block's records at once rather than one by one."""
    index = read_index(data, name)
    expected = index.first_seq
    view = memoryview(data)
    for entry in index.blocks:
        if (since_ns is not None and entry.max_time_ns < since_ns) or (
            until_ns is not None and entry.min_time_ns > until_ns
        ):
            expected += entry.records
            continue
        records = decode_block(view, entry, name)
        for record in records:
            if record.seq != expected:
                raise ArchiveCorrupt(
                    f"record sequence {record.seq} where {expected} was expected", segment=name, offset=entry.position
                )
            expected += 1
        yield entry, records


def iter_records(
    data: bytes, name: str, *, since_ns: int | None = None, until_ns: int | None = None
) -> Iterator[Record]:
    """Every record of a segment in sequence order, skipping blocks entirely outside [since, until]."""
    for _, records in iter_blocks(data, name, since_ns=since_ns, until_ns=until_ns):
        yield from records


def verify_segment(data: bytes, name: str) -> SegmentIndex:
    """Decode everything and check that the parts agree; raises ArchiveCorrupt naming the first fault."""
    index = read_index(data, name)
    _, position = parse_header(data, name)
    for entry in index.blocks:
        if entry.position != position:
            raise ArchiveCorrupt("footer index does not tile the blocks", segment=name, offset=entry.position)
        position += entry.length
    footer_at = index.size - TRAILER_SIZE - footer_length(data[-TRAILER_SIZE:], name, len(data))[0]
    if position != footer_at:
        raise ArchiveCorrupt("bytes between the last block and the footer", segment=name, offset=position)
    if index.records != sum(e.records for e in index.blocks) or index.records != index.last_seq - index.first_seq + 1:
        raise ArchiveCorrupt("footer record count disagrees with its sequence range", segment=name, offset=footer_at)
    count = sum(1 for _ in iter_records(data, name))
    if count != index.records:
        raise ArchiveCorrupt(f"{count} records read, the footer says {index.records}", segment=name)
    return index
