"""A stream chunk appended whole makes the archive that appending its messages one by one would: the
same segment files byte for byte (records, blocks, footers), rolled at the same places."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from bridge.archive.reader import list_segments, read_index, read_records
from bridge.archive.record import Source, SourceKind
from bridge.archiver.writer import RollPolicy, SegmentWriter
from protocol.loop import run
from sinks import LocalSink

S = 1_000_000_000
STREAM = Source("/", SourceKind.STREAM, "events")
T0 = int(dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC).timestamp()) * S
CHUNK_TS_MS = T0 // 1_000_000 - 5


def chunks(count: int, seed: int) -> list[list[tuple[int, bytes]]]:
    """Chunks of 1 to 300 messages of 0 to 3000 bytes, offsets contiguous from 100."""
    rng = random.Random(seed)
    out, offset = [], 100
    while count > 0:
        n = min(count, rng.randint(1, 300))
        out.append([(offset + i, rng.randbytes(rng.randint(0, 3000))) for i in range(n)])
        offset += n
        count -= n
    return out


async def archive(root: Path, policy: RollPolicy, data: list[list[tuple[int, bytes]]], whole: bool) -> dict[str, bytes]:
    sink = LocalSink(root)
    await sink.check()
    writer = SegmentWriter(sink, STREAM, policy=policy, clock=lambda: T0)
    await writer.start()
    for n, chunk in enumerate(data):
        ts = CHUNK_TS_MS + n
        if whole:
            writer.append_stream_chunk(chunk, ts)
        else:
            for offset, body in chunk:
                writer.append_stream(body, offset, ts)
    await writer.close()
    return {seg.key: (root / seg.key).read_bytes() for seg in await list_segments(sink, "", STREAM)}


POLICIES = {
    "one segment": RollPolicy(max_bytes=1 << 30, max_age=3600),
    "small blocks": RollPolicy(max_bytes=1 << 30, max_age=3600, block_bytes=4096),
    "rolled by size mid-chunk": RollPolicy(max_bytes=150_000, max_age=3600, block_bytes=16_384),
    "rolled by count mid-chunk": RollPolicy(max_bytes=1 << 30, max_age=3600, max_records=77),
}


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_a_chunk_appended_whole_makes_the_same_segments_byte_for_byte(tmp_path, policy):
    data = chunks(2500, seed=7)
    by_message = run(archive(tmp_path / "one-by-one", policy, data, whole=False))
    by_chunk = run(archive(tmp_path / "whole", policy, data, whole=True))
    assert len(by_message) >= (1 if policy.max_bytes > 1 << 20 and policy.max_records is None else 3)
    assert list(by_chunk) == list(by_message)
    for key in by_message:
        assert by_chunk[key] == by_message[key], key


def test_every_message_of_every_chunk_reads_back_in_offset_order_with_its_chunk_time(tmp_path):
    data = chunks(1000, seed=3)
    run(archive(tmp_path, POLICIES["rolled by size mid-chunk"], data, whole=True))

    async def read() -> list[tuple[int, int, bytes, int]]:
        sink = LocalSink(tmp_path)
        out = []
        for seg in await list_segments(sink, "", STREAM):
            index = await read_index(sink, seg)
            assert index.first_offset is not None and index.last_offset is not None
            records = [r async for r in read_records(sink, seg)]
            assert (index.first_offset, index.last_offset) == (records[0].offset, records[-1].offset)
            out += [(r.seq, r.offset, r.body, r.chunk_ts_ms) for r in records]
        return out

    got = run(read())
    expected = [(offset, body, CHUNK_TS_MS + n) for n, chunk in enumerate(data) for offset, body in chunk]
    assert [(offset, body, ts) for _, offset, body, ts in got] == expected
    assert [seq for seq, *_ in got] == list(range(1, len(expected) + 1))
