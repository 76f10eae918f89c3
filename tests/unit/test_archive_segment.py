"""The segment codec end to end: messages written through the rolling writer to a local sink read back equal
field for field and type for type, and any damage to a segment file is reported as ArchiveCorrupt naming it."""

from __future__ import annotations

import datetime as dt
import decimal
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.archive.layout import SegmentKey
from bridge.archive.reader import list_segments, read_index, read_records
from bridge.archive.record import (
    CopyMark,
    Record,
    RecordKind,
    Source,
    SourceKind,
    amqp_record_map,
    filter_fields,
)
from bridge.archive.segment import HEADER_FIXED, TRAILER_SIZE, SegmentBuilder, SegmentIndex, verify_segment
from bridge.archiver.writer import RollPolicy, SegmentWriter
from bridge.errors import ArchiveCorrupt
from protocol.core.message import PROPERTY_NAMES, Message, decode_properties
from protocol.loop import run
from sinks import LocalSink

BLOCK_BYTES = 512
POLICY = RollPolicy(max_bytes=4096, block_bytes=BLOCK_BYTES, max_age=3600)
QUEUE = Source("/", SourceKind.QUEUE, "orders/eu")
STREAM = Source("prod", SourceKind.STREAM, "events")
BLOCK_HEADER_SIZE = 16

# ---- messages with every basic property ----------------------------------------------------------

shortstr = st.text(max_size=30).filter(lambda s: len(s.encode()) <= 255)
# pamqp leaves an empty-string property out when encoding, so a present string property is never empty.
property_str = st.text(min_size=1, max_size=30).filter(lambda s: len(s.encode()) <= 255)
field_names = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 128)  # pamqp truncates longer
whole_seconds = st.integers(0, 2**32 - 1).map(lambda s: dt.datetime.fromtimestamp(s, dt.UTC))
field_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=40),
    st.builds(bytearray, st.binary(max_size=40)),
    st.builds(lambda m, e: decimal.Decimal(m).scaleb(-e), st.integers(-(10**8), 10**8), st.integers(0, 6)),
    whole_seconds,
)
field_tables = st.recursive(
    st.dictionaries(field_names, field_scalars, max_size=5),
    lambda inner: st.dictionaries(
        field_names, st.one_of(field_scalars, inner, st.lists(st.one_of(field_scalars, inner), max_size=4)), max_size=4
    ),
    max_leaves=12,
)
# The 14th basic property, cluster-id, is deprecated: pamqp refuses any value but the empty default.
property_values: dict[str, st.SearchStrategy[Any]] = {
    "content_type": property_str,
    "content_encoding": property_str,
    "headers": field_tables,
    "delivery_mode": st.sampled_from([1, 2]),
    "priority": st.integers(0, 9),
    "correlation_id": property_str,
    "reply_to": property_str,
    "expiration": st.integers(0, 10**9).map(str),
    "message_id": property_str,
    "timestamp": whole_seconds,
    "message_type": property_str,
    "user_id": property_str,
    "app_id": property_str,
}
property_dicts = st.fixed_dictionaries({}, optional=property_values)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.builds(random_bytes, st.integers(BLOCK_BYTES + 1, 4 * BLOCK_BYTES), st.integers(0, 2**32)),
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, dict[str, Any]]:
    props = draw(property_dicts)
    message = Message.build(draw(bodies), props, exchange=draw(shortstr), routing_key=draw(shortstr))
    message.redelivered = draw(st.booleans())
    return message, props


# ---- writing and reading back --------------------------------------------------------------------


async def archive_messages(root: Path, messages: list[Message]) -> tuple[list[SegmentKey], list[Record]]:
    sink = LocalSink(root)
    await sink.check()
    writer = SegmentWriter(sink, QUEUE, policy=POLICY, retry_base=0.01, retry_max=0.01)
    await writer.start()
    for message in messages:
        writer.append_message(message)
    await writer.close()
    return await read_back(sink)


async def read_back(sink: LocalSink) -> tuple[list[SegmentKey], list[Record]]:
    segments = await list_segments(sink)
    records = []
    for seg in segments:
        records += [record async for record in read_records(sink, seg)]
    return segments, records


async def indexes(sink: LocalSink, segments: list[SegmentKey]) -> list[SegmentIndex]:
    return [await read_index(sink, seg) for seg in segments]


def assert_same_typed(got: Any, want: Any, where: str) -> None:
    """Equal, and of the same AMQP type: a decimal stays a decimal, a byte array stays bytes."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert set(got) == set(want), where
        for key, value in want.items():
            assert_same_typed(got[key], value, f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), where
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_typed(g, w, f"{where}[{i}]")
    elif isinstance(want, (bytes, bytearray)):
        assert isinstance(got, (bytes, bytearray)), where
        assert bytes(got) == bytes(want), where
    elif isinstance(want, decimal.Decimal):
        assert type(got) is decimal.Decimal, where
        assert got.as_tuple() == want.as_tuple(), where
    elif isinstance(want, dt.datetime):
        assert type(got) is dt.datetime, where
        assert got == want, where
    else:
        assert type(got) is type(want), where
        assert got == want, where


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=st.lists(messages(), min_size=1, max_size=20))
def test_messages_round_trip_through_segments_field_for_field_and_type_for_type(drawn):
    with tempfile.TemporaryDirectory() as tmp:
        segments, records = run(archive_messages(Path(tmp) / "archive", [m for m, _ in drawn]))

    assert all(seg.source == QUEUE for seg in segments)
    assert [r.seq for r in records] == list(range(1, len(drawn) + 1))
    for record, (message, props) in zip(records, drawn, strict=True):
        assert record.kind is RecordKind.AMQP091
        assert record.exchange == message.exchange
        assert record.routing_key == message.routing_key
        assert record.raw_properties == message.raw_properties
        assert record.body == message.body
        assert record.redelivered is message.redelivered
        decoded = decode_properties(record.raw_properties)
        for name in PROPERTY_NAMES:
            if name in props:
                assert_same_typed(getattr(decoded, name), props[name], name)
            elif name != "cluster_id":
                assert getattr(decoded, name) is None, name


def test_many_messages_round_trip_across_several_segments_and_blocks(tmp_path):
    rng = random.Random(7)
    sent = []
    for i in range(60):
        body = rng.randbytes(rng.choice([0, 10, 300, 3 * BLOCK_BYTES]))
        props = {
            "message_id": f"m-{i}",
            "timestamp": dt.datetime(2024, 5, 1, 10, 0, i % 60, tzinfo=dt.UTC),
            "headers": {"price": decimal.Decimal("9.99"), "blob": bytearray(b"\x00\xff"), "n": i, "tags": ["a", i]},
        }
        message = Message.build(body, props, exchange="shop", routing_key=f"orders.{i % 3}")
        message.redelivered = i % 4 == 0
        sent.append(message)

    async def scenario() -> tuple[list[SegmentKey], list[Record], list[SegmentIndex]]:
        segments, records = await archive_messages(tmp_path / "archive", sent)
        return segments, records, await indexes(LocalSink(tmp_path / "archive"), segments)

    segments, records, index = run(scenario())
    assert len(segments) > 2
    assert any(len(i.blocks) > 1 for i in index)
    assert [r.seq for r in records] == list(range(1, 61))
    assert [(r.body, r.raw_properties, r.routing_key, r.redelivered) for r in records] == [
        (m.body, m.raw_properties, m.routing_key, m.redelivered) for m in sent
    ]
    # segments tile the sequence without gaps or overlaps
    assert [i.first_seq for i in index] == [1] + [i.last_seq + 1 for i in index[:-1]]
    assert index[-1].last_seq == 60


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(
        st.tuples(bodies, st.integers(0, 2**63 - 1), st.integers(0, 2**41)),
        min_size=1,
        max_size=20,
    )
)
def test_stream_records_keep_body_offset_and_chunk_timestamp(chunks):
    async def scenario(root: Path) -> list[Record]:
        sink = LocalSink(root)
        await sink.check()
        writer = SegmentWriter(sink, STREAM, policy=POLICY, retry_base=0.01, retry_max=0.01)
        await writer.start()
        for encoded, offset, chunk_ts in chunks:
            writer.append_stream(encoded, offset, chunk_ts)
        await writer.close()
        return (await read_back(sink))[1]

    with tempfile.TemporaryDirectory() as tmp:
        records = run(scenario(Path(tmp) / "archive"))
    assert [r.seq for r in records] == list(range(1, len(chunks) + 1))
    for record, (encoded, offset, chunk_ts) in zip(records, chunks, strict=True):
        assert record.kind is RecordKind.STREAM
        assert record.body == encoded
        assert record.offset == offset
        assert record.chunk_ts_ms == chunk_ts
        assert record.time_ns == chunk_ts * 1_000_000


@given(
    deliveries=st.lists(
        st.tuples(
            property_dicts,
            st.integers(0, 2**62),  # capture times in any order: a clock may step back
            st.sampled_from([None, CopyMark(1, proven=True), CopyMark(1, proven=False)]),
            st.sampled_from([None, 1_700_000_000_000_000_000]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_queue_record_fast_path_writes_the_segment_the_general_one_does(deliveries):
    general = SegmentBuilder(QUEUE, created_ns=1, block_bytes=BLOCK_BYTES)
    fast = SegmentBuilder(QUEUE, created_ns=1, block_bytes=BLOCK_BYTES)
    for seq, (props, captured, mark, snapshot) in enumerate(deliveries, start=1):
        message = Message.build(b"body %d" % seq, props, exchange="x", routing_key="r")
        general.add(amqp_record_map(seq, captured, message, mark=mark, snapshot=snapshot))
        fast.add_queue_record(
            amqp_record_map(seq, captured, message, mark=mark, snapshot=snapshot), seq, captured, mark, snapshot
        )
    assert fast.records == general.records == len(deliveries)
    assert fast.finish() == general.finish()  # footer statistics included


@given(props=property_dicts)
def test_filter_fields_read_message_id_and_timestamp_without_decoding(props):
    raw = Message.build(b"", props).raw_properties
    expected_ts = int(props["timestamp"].timestamp()) if "timestamp" in props else None
    assert filter_fields(raw) == (props.get("message_id"), expected_ts)


# ---- damage -------------------------------------------------------------------------------------


def written_segment(tmp_path: Path, messages: list[Message], policy: RollPolicy = POLICY) -> tuple[str, bytes]:
    """The key and bytes of the first segment the writer made of `messages`."""

    async def scenario() -> tuple[str, bytes]:
        sink = LocalSink(tmp_path / "archive")
        await sink.check()
        writer = SegmentWriter(sink, QUEUE, policy=policy, retry_base=0.01, retry_max=0.01)
        await writer.start()
        for message in messages:
            writer.append_message(message)
        await writer.close()
        (seg, *_) = await list_segments(sink)
        return seg.key, await sink.get(seg.key)

    return run(scenario())


def small_messages() -> list[Message]:
    rng = random.Random(3)
    return [
        Message.build(rng.randbytes(40) if i % 2 else b"", {"message_id": str(i)}, routing_key="rk") for i in range(7)
    ]


def flipped(data: bytes, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def assert_corrupt(data: bytes, key: str) -> None:
    try:
        verify_segment(data, key)
    except ArchiveCorrupt as err:
        assert err.segment == key
        assert key in str(err)
    else:
        pytest.fail("damaged segment verified as sound")


def test_every_single_bit_flip_in_a_small_segment_is_found(tmp_path):
    key, data = written_segment(tmp_path, small_messages(), RollPolicy(block_bytes=150))
    index = verify_segment(data, key)
    assert len(index.blocks) > 1  # so block headers and payloads are both flipped below
    for bit in range(len(data) * 8):
        assert_corrupt(flipped(data, bit), key)


def segment_regions(index: SegmentIndex, header_end: int) -> dict[str, range]:
    size = index.size
    footer_at = index.blocks[-1].position + index.blocks[-1].length
    regions = {"header": range(0, header_end)}
    for n, block in enumerate(index.blocks):
        regions[f"block {n} header"] = range(block.position, block.position + BLOCK_HEADER_SIZE)
        regions[f"block {n} payload"] = range(block.position + BLOCK_HEADER_SIZE, block.position + block.length)
    regions["footer"] = range(footer_at, size - TRAILER_SIZE)
    regions["trailer"] = range(size - TRAILER_SIZE, size)
    return regions


def test_bit_flips_spread_over_every_part_of_a_large_segment_are_found(tmp_path):
    rng = random.Random(11)
    sent = [
        Message.build(rng.randbytes(rng.choice([0, 50, 2 * BLOCK_BYTES])), {"message_id": str(i)}) for i in range(30)
    ]
    key, data = written_segment(tmp_path, sent, RollPolicy(block_bytes=BLOCK_BYTES))
    index = verify_segment(data, key)
    assert len(index.blocks) > 3
    header_end = index.blocks[0].position
    regions = segment_regions(index, header_end)
    assert sum(len(r) for r in regions.values()) == len(data)  # the regions tile the file
    positions = set()
    for region in regions.values():
        # short regions whole, long ones at up to 12 spread bytes, each with a different bit
        step = max(1, len(region) // 12)
        positions.update(region[::step])
        positions.add(region[-1])
    assert len(positions) > 150
    for byte in sorted(positions):
        assert_corrupt(flipped(data, byte * 8 + byte % 8), key)


def test_truncation_at_any_point_is_found(tmp_path):
    key, data = written_segment(tmp_path, small_messages(), RollPolicy(block_bytes=150))
    index = verify_segment(data, key)
    lengths = {0, 1, len(b"\x89WRNSEG"), HEADER_FIXED - 1, HEADER_FIXED, index.blocks[0].position}
    for block in index.blocks:
        lengths |= {block.position + 1, block.position + BLOCK_HEADER_SIZE, block.position + block.length - 1}
    lengths |= {len(data) - TRAILER_SIZE, len(data) - TRAILER_SIZE - 1, len(data) - 1}
    lengths |= set(range(0, len(data), 7))
    for length in sorted(lengths):
        assert_corrupt(data[:length], key)


def test_bytes_appended_after_the_trailer_are_found(tmp_path):
    key, data = written_segment(tmp_path, small_messages())
    assert_corrupt(data + b"\x00", key)
    assert_corrupt(data + data, key)


def test_reading_a_damaged_segment_from_a_sink_raises_archive_corrupt_naming_it(tmp_path):
    key, data = written_segment(tmp_path, small_messages(), RollPolicy(block_bytes=150))
    index = verify_segment(data, key)
    payload_byte = index.blocks[1].position + BLOCK_HEADER_SIZE + 3

    async def read_damaged(damaged: bytes) -> ArchiveCorrupt:
        sink = LocalSink(tmp_path / "archive")
        await sink.put(key, damaged)
        (seg,) = await list_segments(sink)
        with pytest.raises(ArchiveCorrupt) as caught:
            await read_index(sink, seg)
            [record async for record in read_records(sink, seg)]
        return caught.value

    for damaged in (flipped(data, payload_byte * 8), flipped(data, (len(data) - 20) * 8), data[:-1]):
        err = run(read_damaged(damaged))
        assert err.segment == key
        assert key in str(err)
