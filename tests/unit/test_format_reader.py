"""docs/read_segment.py, written from docs/FORMAT.md alone, reads what warren writes, field for field.

The standalone reader runs in a subprocess, as a user of the specification would run it; a few
exhaustive and property-based checks load it in-process to stay fast.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import google_crc32c
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.archive import record as record_module
from bridge.archive.record import (
    CopyMark,
    Record,
    Source,
    SourceKind,
    amqp_record_map,
    filter_fields,
    stream_record_map,
)
from bridge.archive.segment import (
    HEADER_FIXED,
    SegmentBuilder,
    iter_records,
    read_index,
    segment_name,
)
from protocol.core.message import Message

READER = Path(__file__).resolve().parents[2] / "docs" / "read_segment.py"
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z, in ns
QUEUE = Source("/", SourceKind.QUEUE, "orders.eu")
STREAM = Source("prod ü", SourceKind.STREAM, "events")


def load_reader() -> ModuleType:
    spec = importlib.util.spec_from_file_location("read_segment", READER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reader = load_reader()


def run_reader(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(READER), *args, str(path)], capture_output=True, text=True, timeout=120, check=False
    )


def amqp_messages() -> list[tuple[Message, bool, bytes | None]]:
    """Messages with every kind of property section, and the delivery's redelivered flag and fingerprint."""
    rng = random.Random(7)
    full = {
        "content_type": "application/json",
        "content_encoding": "gzip",
        "headers": {
            "x-int": 42,
            "x-neg": -(2**40),
            "x-str": "straße",
            "x-bool": True,
            "x-dec": decimal.Decimal("3.14"),
            "x-ts": dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.UTC),
            "x-bytes": bytearray(b"\x00\xff"),
            "x-nested": {"a": [1, "two", None]},
            "x-void": None,
        },
        "delivery_mode": 2,
        "priority": 5,
        "correlation_id": "corr-1",
        "reply_to": "amq.rabbitmq.reply-to",
        "expiration": "60000",
        "message_id": "id-ü-1",
        "timestamp": dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC),
        "message_type": "order.created",
        "user_id": "guest",
        "app_id": "shop",
    }
    out: list[tuple[Message, bool, bytes | None]] = []
    for i in range(60):
        body = rng.randbytes(rng.choice([0, 1, 40, 300]))
        props: dict[str, Any] | None
        if i % 4 == 0:
            props = full
        elif i % 4 == 1:
            props = None  # property section b"\x00\x00"
        elif i % 4 == 2:
            props = {"delivery_mode": 2, "timestamp": dt.datetime.fromtimestamp(1_600_000_000 + i, dt.UTC)}
        else:
            props = {"message_id": f"m-{i}", "headers": {"n": i}}
        message = Message.build(body, props, exchange=["", "amq.topic", "ex-ä"][i % 3], routing_key=f"rk.{i}.é")
        message.redelivered = i % 5 == 0
        out.append((message, message.redelivered, rng.randbytes(16) if i % 7 == 0 else None))
    out.append((Message.build(rng.randbytes(5000), full, exchange="big", routing_key="big"), False, None))
    return out


def queue_segment(block_bytes: int = 1024) -> bytes:
    builder = SegmentBuilder(QUEUE, created_ns=T0, block_bytes=block_bytes)
    for seq, (message, _, fingerprint) in enumerate(amqp_messages(), start=1):
        mark = CopyMark(seq - 1, proven=seq % 3 == 0) if fingerprint is not None and seq > 1 else None
        snapshot = T0 if seq % 11 == 0 else None
        builder.add(
            amqp_record_map(seq, T0 + seq * 1_000, message, fingerprint=fingerprint, mark=mark, snapshot=snapshot)
        )
    return builder.finish()


def stream_segment(first_seq: int = 101, count: int = 50, block_bytes: int = 512) -> bytes:
    rng = random.Random(11)
    builder = SegmentBuilder(STREAM, created_ns=T0, block_bytes=block_bytes)
    for i in range(count):
        encoded = b"\x00\x53\x75\xb0" + rng.randbytes(rng.randrange(0, 200))  # a data section, as AMQP 1.0 bytes
        chunk_ts_ms = T0 // 1_000_000 - 5_000 + (i // 3)  # several messages per chunk, chunks before capture
        builder.add(stream_record_map(first_seq + i, T0 + i * 1_000, encoded, 9_000 + i, chunk_ts_ms))
    return builder.finish()


def write(tmp_path: Path, data: bytes, first_seq: int = 1) -> Path:
    path = tmp_path / segment_name(first_seq)
    path.write_bytes(data)
    return path


def assert_same_record(line: dict[str, Any], record: Record) -> None:
    assert line["seq"] == record.seq
    assert line["kind"] == record.kind
    assert line["captured_ns"] == record.captured_ns
    assert line["time_ns"] == record.time_ns
    assert base64.b64decode(line["body"], validate=True) == record.body
    assert line.get("exchange", "") == record.exchange
    assert line.get("routing_key", "") == record.routing_key
    assert base64.b64decode(line.get("raw_properties", "")) == record.raw_properties
    assert line.get("redelivered", False) == record.redelivered
    assert line.get("offset") == record.offset
    assert line.get("chunk_ts_ms") == record.chunk_ts_ms
    fingerprint = line.get("fingerprint")
    assert (None if fingerprint is None else base64.b64decode(fingerprint)) == record.fingerprint
    assert (line.get("copy_of"), line.get("possible_copy_of")) == (record.copy_of, record.possible_copy_of)
    assert line.get("snapshot") == record.snapshot


def test_reader_prints_every_queue_record_as_warren_reads_it(tmp_path):
    data = queue_segment()
    path = write(tmp_path, data)
    assert len(read_index(data, path.name).blocks) >= 5

    result = run_reader(path)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    records = list(iter_records(data, path.name))
    assert len(lines) == len(records) == len(amqp_messages())
    for line, record, (message, redelivered, fingerprint) in zip(lines, records, amqp_messages(), strict=True):
        assert_same_record(line, record)
        assert base64.b64decode(line["raw_properties"]) == message.raw_properties
        assert line["exchange"] == message.exchange and line["routing_key"] == message.routing_key
        assert line.get("redelivered", False) == redelivered
        assert line.get("fingerprint") == (fingerprint and base64.b64encode(fingerprint).decode())
        assert (line.get("message_id"), line.get("timestamp")) == filter_fields(message.raw_properties)


def test_reader_prints_every_stream_record_with_offset_and_chunk_time(tmp_path):
    data = stream_segment(first_seq=101)
    path = write(tmp_path, data, first_seq=101)
    assert len(read_index(data, path.name).blocks) >= 5

    result = run_reader(path)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    records = list(iter_records(data, path.name))
    assert [line["seq"] for line in lines] == list(range(101, 151))
    for line, record in zip(lines, records, strict=True):
        assert_same_record(line, record)
        assert line["time_ns"] == line["chunk_ts_ms"] * 1_000_000 != line["captured_ns"]
        assert not {"exchange", "routing_key", "raw_properties"} & line.keys()


@pytest.mark.parametrize("make", [queue_segment, stream_segment], ids=["queue", "stream"])
def test_summary_matches_warrens_footer_index(tmp_path, make):
    data = make()
    path = write(tmp_path, data)
    index = read_index(data, path.name)

    result = run_reader(path, "--summary")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["size"] == len(data) == index.size
    assert summary["header"]["source"] == index.source.to_map()
    assert summary["header"]["first_seq"] == index.first_seq
    footer = summary["footer"]
    for field in ("records", "first_seq", "last_seq", "first_captured_ns", "last_captured_ns"):
        assert footer[field] == getattr(index, field)
    for field in ("min_time_ns", "max_time_ns", "first_offset", "last_offset"):
        assert footer[field] == getattr(index, field)
    assert [list(b.values()) for b in summary["blocks"]] == [entry.to_list() for entry in index.blocks]


def _regions(data: bytes) -> dict[str, int]:
    """A byte to damage in each part of a segment."""
    index = read_index(data, "x")
    first = index.blocks[0].position
    footer_length = int.from_bytes(data[-16:-12], "big")
    return {
        "magic": 3,
        "header length": 11,
        "header crc": 12,
        "header map": HEADER_FIXED + 5,
        "block compressed length": first + 3,
        "block raw length": first + 7,
        "block record count": first + 11,
        "block crc": first + 15,
        "block data": first + 20,
        "footer": len(data) - 16 - footer_length // 2,
        "trailer length": len(data) - 13,
        "trailer crc": len(data) - 9,
        "end magic": len(data) - 4,
    }


EXPECTED_COMPLAINT = {
    "magic": "bad magic",
    "header length": "header CRC32C mismatch",
    "header crc": "header CRC32C mismatch",
    "header map": "header CRC32C mismatch",
    "block compressed length": "compressed bytes, the index says",
    "block raw length": "its header says",
    "block record count": "records, the index says",
    "block crc": "block CRC32C mismatch",
    "block data": "block CRC32C mismatch",
    "footer": "footer CRC32C mismatch",
    "trailer length": "footer",
    "trailer crc": "footer CRC32C mismatch",
    "end magic": "bad end magic",
}


@pytest.mark.parametrize("region", sorted(EXPECTED_COMPLAINT))
def test_reader_rejects_one_flipped_bit_and_names_the_problem(tmp_path, region):
    data = bytearray(queue_segment())
    at = _regions(bytes(data))[region]
    data[at] ^= 0x01
    path = write(tmp_path, bytes(data))

    result = run_reader(path)

    assert result.returncode == 5
    assert result.stdout == ""
    assert str(path) in result.stderr
    assert EXPECTED_COMPLAINT[region] in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_reader_rejects_every_single_bit_flip_of_a_segment():
    data = stream_segment(count=8, block_bytes=100)
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 1 << (at % 8)
        with pytest.raises(reader.Corrupt):
            reader.read_segment(bytes(damaged))


def test_reader_rejects_a_truncated_segment(tmp_path):
    data = queue_segment()
    path = write(tmp_path, data[:-1])

    result = run_reader(path)

    assert result.returncode == 5
    assert "truncated or unfinished" in result.stderr


def _rewrite_header(data: bytes, **changes: Any) -> bytes:
    """The segment with header fields changed, keeping the header's length so block positions hold."""
    length = int.from_bytes(data[8:12], "big")
    header = msgpack.unpackb(data[HEADER_FIXED : HEADER_FIXED + length])
    header.update(changes)
    body = msgpack.packb(header)
    assert len(body) == length
    crc = google_crc32c.value(body).to_bytes(4, "big")
    return data[:8] + length.to_bytes(4, "big") + crc + body + data[HEADER_FIXED + length :]


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [({"format": 2}, "unsupported format version 2"), ({"codec": "lz4!"}, "unsupported codec 'lz4!'")],
)
def test_reader_rejects_unknown_format_versions_and_codecs(tmp_path, changes, complaint):
    path = write(tmp_path, _rewrite_header(queue_segment(), **changes))

    result = run_reader(path)

    assert result.returncode == 5
    assert complaint in result.stderr


def test_reader_ignores_record_keys_it_does_not_know(tmp_path):
    builder = SegmentBuilder(QUEUE, created_ns=T0, block_bytes=64)
    message = Message.build(b"hello", {"delivery_mode": 2}, routing_key="rk")
    for seq in (1, 2, 3):
        builder.add({**amqp_record_map(seq, T0 + seq, message), "zz": {"added": "later"}, "q": seq})
    data = builder.finish()
    path = write(tmp_path, data)

    result = run_reader(path)

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for line, record in zip(lines, iter_records(data, path.name), strict=True):
        assert_same_record(line, record)
        assert "zz" not in line and "q" not in line


def test_crc32c_is_castagnoli():
    assert reader.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert reader.crc32c(b"") == 0
    data = random.Random(3).randbytes(4099)
    assert reader.crc32c(data) == google_crc32c.value(data)


def described_digest(message: Message) -> bytes:
    """docs/FORMAT.md's fingerprint, for a message whose headers (if any) are in name order and hold no
    x-delivery-count."""
    h = hashlib.blake2b(digest_size=16)
    for part in (message.exchange.encode(), message.routing_key.encode(), message.raw_properties):
        h.update(len(part).to_bytes(4, "big") + part)
    h.update(message.body)
    return h.digest()


def test_fingerprint_is_the_blake2b_digest_format_md_describes():
    for message, _, _ in amqp_messages():
        assert record_module.message_fingerprint(message) == described_digest(message)


def test_fingerprint_takes_headers_in_name_order_as_some_brokers_redeliver_them():
    sent = Message.build(b"body", {"headers": {"kind": "tick", "every": 1}}, exchange="x", routing_key="k")
    again = Message.build(b"body", {"headers": {"every": 1, "kind": "tick", "x-delivery-count": 1}}, exchange="x")
    again.routing_key = "k"
    assert record_module.message_fingerprint(again) == record_module.message_fingerprint(sent)


def test_fingerprint_leaves_out_the_brokers_delivery_count():
    first = Message.build(b"body", {"headers": {"a": 1, "b": "two"}}, exchange="x", routing_key="k")
    again = Message.build(
        b"body", {"headers": {"a": 1, "x-delivery-count": 3, "b": "two"}}, exchange="x", routing_key="k"
    )
    other = Message.build(
        b"body", {"headers": {"a": 2, "x-delivery-count": 3, "b": "two"}}, exchange="x", routing_key="k"
    )
    assert record_module.message_fingerprint(again) == record_module.message_fingerprint(first)
    assert record_module.message_fingerprint(other) != record_module.message_fingerprint(first)


def test_fingerprint_of_a_property_section_that_cannot_be_walked_is_taken_over_its_bytes():
    broken = Message(b"body", b"\x20\x00\x00\x00\x00\xff", exchange="x", routing_key="k")  # table runs past the end
    assert record_module.message_fingerprint(broken) == described_digest(broken)


stream_records = st.lists(
    st.tuples(st.binary(max_size=300), st.integers(0, 2**63 - 1), st.integers(0, 2**44)), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=stream_records, first_seq=st.integers(1, 2**40), block_bytes=st.integers(1, 2_000))
def test_reader_agrees_with_warren_on_any_stream_segment(records, first_seq, block_bytes):
    builder = SegmentBuilder(STREAM, created_ns=T0, block_bytes=block_bytes)
    for i, (encoded, offset, chunk_ts_ms) in enumerate(records):
        builder.add(stream_record_map(first_seq + i, T0 + i, encoded, offset, chunk_ts_ms))
    data = builder.finish()

    segment = reader.read_segment(data)

    lines = [json.loads(json.dumps(reader.record_json(m))) for m in segment.records]
    for line, record in zip(lines, iter_records(data, "x"), strict=True):
        assert_same_record(line, record)


def test_fingerprint_of_a_headerless_message_matches_its_redelivery_with_only_a_delivery_count():
    """A quorum queue redelivers a message published without headers with `x-delivery-count` alone."""
    first = Message.build(b"body", {"message_id": "m1"}, exchange="x", routing_key="k")
    again = Message.build(
        b"body", {"message_id": "m1", "headers": {"x-delivery-count": 1}}, exchange="x", routing_key="k"
    )
    other = Message.build(b"body", {"message_id": "m1", "headers": {"k": "v"}}, exchange="x", routing_key="k")
    assert again.raw_properties != first.raw_properties
    assert record_module.message_fingerprint(again) == record_module.message_fingerprint(first)
    assert record_module.message_fingerprint(other) != record_module.message_fingerprint(first)
