"""`--by captured|published|broker`: which of a record's times a window reads, and where each comes from."""

from __future__ import annotations

import datetime as dt

from rstream import AMQPMessage
from rstream._pyamqp.message import Properties as StreamProperties

from bridge.archive.clocks import Clock, record_time
from bridge.archive.reader import TimeRange
from bridge.archive.record import Record, RecordKind
from protocol.core.message import Message

S = 1_000_000_000
CAPTURED = 1_764_720_600 * S  # the archiver got it at 00:10
PUBLISHED = 1_764_720_000  # the producer stamped it 00:00 (seconds)
BROKER_MS = 1_764_720_300_000  # the broker stored it at 00:05


def queue_record(props: dict) -> Record:
    message = Message.build(b"body", props)
    return Record(1, CAPTURED, RecordKind.AMQP091, b"body", raw_properties=message.raw_properties)


def stream_record(creation_ms: int | None) -> Record:
    body = bytes(AMQPMessage(body=b"x", properties=StreamProperties(creation_time=creation_ms)))
    return Record(1, CAPTURED, RecordKind.STREAM, body, offset=0, chunk_ts_ms=BROKER_MS)


def test_a_queue_records_three_clocks():
    record = queue_record(
        {"timestamp": dt.datetime.fromtimestamp(PUBLISHED, dt.UTC), "headers": {"timestamp_in_ms": BROKER_MS}}
    )
    assert record_time(record, Clock.CAPTURED) == CAPTURED
    assert record_time(record, Clock.PUBLISHED) == PUBLISHED * S
    assert record_time(record, Clock.BROKER) == BROKER_MS * 1_000_000
    assert record_time(record, None) == CAPTURED  # a queue record's own time: its capture


def test_a_stream_records_three_clocks():
    record = stream_record(PUBLISHED * 1000 + 250)
    assert record_time(record, Clock.PUBLISHED) == (PUBLISHED * 1000 + 250) * 1_000_000
    assert record_time(record, Clock.BROKER) == BROKER_MS * 1_000_000
    assert record_time(record, None) == BROKER_MS * 1_000_000  # a stream record's own time: its chunk's
    assert record_time(record, Clock.CAPTURED) == CAPTURED


def test_without_the_chosen_clock_a_record_is_placed_by_its_capture_time():
    assert record_time(queue_record({}), Clock.PUBLISHED) == CAPTURED
    assert record_time(queue_record({"headers": {"timestamp_in_ms": "soon"}}), Clock.BROKER) == CAPTURED
    assert record_time(stream_record(None), Clock.PUBLISHED) == CAPTURED


def test_a_window_by_the_producers_clock_selects_what_the_capture_time_would_not():
    record = queue_record({"timestamp": dt.datetime.fromtimestamp(PUBLISHED, dt.UTC)})
    before_capture = TimeRange(until_ns=PUBLISHED * S + 60 * S)  # 00:01: published before, captured after
    assert not before_capture.holds(record)
    assert TimeRange(until_ns=PUBLISHED * S + 60 * S, clock=Clock.PUBLISHED).holds(record)
    assert TimeRange(until_ns=PUBLISHED * S + 60 * S, clock=Clock.PUBLISHED).block_bounds == {
        "since_ns": None,
        "until_ns": None,
    }  # the footers index the other clock: no block is skipped by it
