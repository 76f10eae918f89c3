"""Which clock a time filter reads (`--by`): every record carries up to three times.

- captured: when the archiver received the message (every record has it);
- published: the producer's own time: the AMQP 0-9-1 `timestamp` property (seconds), or an AMQP 1.0
  stream message's properties `creation-time` (milliseconds);
- broker: when the broker stored it: a stream chunk's timestamp, or for a queue message the
  `timestamp_in_ms` header RabbitMQ's incoming message interceptor sets (rabbitmq.conf
  `message_interceptors.incoming.set_header_timestamp`), when it is enabled.

Without `--by`, a record's time is the broker's for stream records and the capture time for queue
records (`Record.time_ns`), which the footers index. A record without the chosen clock (a message
published without a timestamp, a queue without the interceptor) is placed by its capture time.
"""

from __future__ import annotations

import enum

from bridge.archive.record import Record, RecordKind, filter_fields
from protocol.stream.filter_values import creation_time_ms

BROKER_TIMESTAMP_HEADER = "timestamp_in_ms"
BY_HELP = (
    "which clock --at/--since/--until read: captured (the archiver's), published (the producer's timestamp), "
    "broker (a stream chunk's time; a queue message's timestamp_in_ms header); default: broker for streams, "
    "captured for queues"
)


class Clock(enum.StrEnum):
    CAPTURED = "captured"
    PUBLISHED = "published"
    BROKER = "broker"


CLOCKS = [str(c) for c in Clock]  # the choices of --by


def record_time(record: Record, clock: Clock | None) -> int:
    """The record's time in UTC nanoseconds by `clock` (None: `Record.time_ns`), else its capture time."""
    if clock is None:
        return record.time_ns
    found = None
    if clock is Clock.PUBLISHED:
        found = _published_ns(record)
    elif clock is Clock.BROKER:
        found = _broker_ns(record)
    return record.captured_ns if found is None else found


def _published_ns(record: Record) -> int | None:
    if record.kind is RecordKind.STREAM:
        ms = creation_time_ms(record.body)
        return None if ms is None else ms * 1_000_000
    seconds = filter_fields(record.raw_properties)[1]
    return None if seconds is None else seconds * 1_000_000_000


def _broker_ns(record: Record) -> int | None:
    if record.chunk_ts_ms is not None:
        return record.chunk_ts_ms * 1_000_000
    headers = record.properties.headers or {}
    ms = headers.get(BROKER_TIMESTAMP_HEADER)
    return ms * 1_000_000 if isinstance(ms, int) and not isinstance(ms, bool) else None
