"""Republish a stream source's records into a stream over the stream protocol, in offset order.

Each record goes back as the bytes the broker stored (AMQP 1.0), so it is byte-identical. The
producer is named after the stream and each message's publishing id is its original offset + 1, so
the broker's publisher deduplication drops anything a rerun sends again: no duplicates, ever.

Each message goes with its filter value (stream filtering, RabbitMQ 3.13+), so that filtered consumers
of the restored stream get what they got from the original: the `x-stream-filter-value` annotation
RabbitMQ keeps for AMQP publishers, or what `filter_from` names for stream-protocol publishers. A
target without stream filtering gets the messages without, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

from bridge.archive.layout import SegmentKey
from bridge.archive.record import Record, RecordKind
from bridge.own_queues import owned_queue_name
from bridge.replay.confirms import ConfirmWindow
from bridge.replay.outcome import SourceOutcome
from bridge.replay.pacing import RateLimit
from bridge.replay.queue_target import SAVE_EVERY, ReplayRefused
from bridge.replay.state import SourceProgress
from protocol.errors import StreamNotFound
from protocol.stream import FilterValueSource, StreamEndpoint, StreamPublisher, stream_filter_value

log = logging.getLogger("warren.replay")

PUBLISHER_PREFIX = "warren-replay:"
BATCH = 500
WINDOW = 5000  # unconfirmed messages in flight
CONFIRM_TIMEOUT = 60.0


def publisher_name(stream: str) -> str:
    """The producer's name, by which the broker deduplicates: `warren-replay:<stream>`, shortened with a
    hash past the 255 bytes it tracks (RabbitMQ 3.10 takes a longer one and breaks the stream's tracking)."""
    return owned_queue_name(PUBLISHER_PREFIX, stream)


async def replay_stream(
    records: AsyncIterator[tuple[SegmentKey, list[Record]]],
    endpoint: StreamEndpoint,
    stream: str,
    outcome: SourceOutcome,
    progress: SourceProgress,
    save_state: Callable[[bool], None],
    *,
    rate: RateLimit | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    filter_from: FilterValueSource | None = None,
) -> None:
    window = ConfirmWindow(progress, outcome)
    name = publisher_name(stream)

    def on_refused(publishing_id: int, reason: str) -> None:
        window.refuse(f"the target refused publishing id {publishing_id} ({reason})")

    async def send(publisher: StreamPublisher, batch: list[tuple[int, bytes, str | None]]) -> None:
        try:
            await publisher.send_batch(
                stream, batch, publisher_name=name, on_confirmed=window.confirm, on_refused=on_refused
            )
        except StreamNotFound:
            raise ReplayRefused(
                f"{outcome.source}: stream {stream!r} does not exist on the target (--definitions restores it)"
            ) from None

    publisher = await endpoint.publisher("warren replay")
    with_filter_value = 0
    try:
        batch: list[tuple[int, bytes, str | None]] = []  # publishing id, stored bytes, filter value
        last_save = time.monotonic()
        async for segment, records_of_block in records:
            if window.refused:
                break
            for record in records_of_block:
                if record.kind is not RecordKind.STREAM or record.offset is None:
                    raise ReplayRefused(f"{segment.key}: record #{record.seq} is not a stream message")
                if rate is not None:
                    await rate.take()
                pid = record.offset + 1  # publishing ids start at 1
                filter_value = stream_filter_value(record.body, filter_from)
                if filter_value is not None:
                    with_filter_value += 1
                batch.append((pid, record.body, filter_value))
                window.sent(pid, record)
                progress.published_seq = record.seq
                if on_progress is not None:
                    on_progress(1, len(record.body))
                if len(batch) >= BATCH:
                    await send(publisher, batch)
                    batch = []
                    await window.wait_below(WINDOW)
                    if window.refused:
                        break
            now = time.monotonic()
            if now - last_save >= SAVE_EVERY:
                save_state(True)
                last_save = now
        if batch and not window.refused:
            await send(publisher, batch)
        await window.wait_settled(CONFIRM_TIMEOUT)
        window.finish()
        save_state(True)
        if with_filter_value and not publisher.filtering:
            log.warning(
                "the target has no stream filtering (RabbitMQ before 3.13): messages went without their filter values",
                extra={"source": str(outcome.source), "with_filter_value": with_filter_value},
            )
        if window.refused:
            raise ReplayRefused(f"{outcome.source}: " + window.refusals[0])
        if len(window):
            raise ReplayRefused(f"{outcome.source}: {len(window)} messages unconfirmed after {CONFIRM_TIMEOUT}s")
    finally:
        await publisher.close()
