"""Republish a stream source's records into a stream over the stream protocol, in offset order.

Each record goes back as the bytes the broker stored (AMQP 1.0), so it is byte-identical. The
producer is named after the stream and each message's publishing id is its original offset + 1, so
the broker's publisher deduplication drops anything a rerun sends again: no duplicates, ever.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from rstream.exceptions import StreamDoesNotExist
from rstream.producer import ConfirmationStatus
from rstream.utils import RawMessage

from bridge.archive.layout import SegmentKey
from bridge.archive.record import Record, RecordKind
from bridge.replay.outcome import SourceOutcome
from bridge.replay.pacing import RateLimit
from bridge.replay.queue_target import SAVE_EVERY, ReplayRefused
from bridge.replay.state import SourceProgress
from protocol.stream import StreamEndpoint

BATCH = 500
WINDOW = 5000  # unconfirmed messages in flight
CONFIRM_TIMEOUT = 60.0


def publisher_name(stream: str) -> str:
    return f"warren-replay:{stream}"


async def replay_stream(
    records: AsyncIterator[tuple[SegmentKey, Record]],
    endpoint: StreamEndpoint,
    stream: str,
    outcome: SourceOutcome,
    progress: SourceProgress,
    save_state: Callable[[bool], None],
    *,
    rate: RateLimit | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    producer = endpoint.producer("warren replay")
    confirmed: set[int] = set()
    refused: list[str] = []
    in_flight: deque[tuple[int, int]] = deque()  # (publishing id, archive sequence)
    room = asyncio.Event()
    room.set()

    def on_confirm(status: ConfirmationStatus) -> None:
        if status.is_confirmed:
            confirmed.add(status.message_id)
        else:
            refused.append(f"the target refused publishing id {status.message_id} (code {status.response_code})")
        settle()

    def settle() -> None:
        while in_flight and in_flight[0][0] in confirmed:
            pid, seq = in_flight.popleft()
            confirmed.discard(pid)
            progress.confirmed_seq = seq
        if len(in_flight) < WINDOW or refused:
            room.set()

    async def send(batch: list[RawMessage]) -> None:
        try:
            await producer.send_batch(
                stream, batch, publisher_name=publisher_name(stream), on_publish_confirm=on_confirm
            )
        except StreamDoesNotExist:
            raise ReplayRefused(
                f"{outcome.source}: stream {stream!r} does not exist on the target (--definitions restores it)"
            ) from None

    await producer.start()
    try:
        batch: list[RawMessage] = []
        last_save = time.monotonic()
        async for segment, record in records:
            if refused:
                break
            if record.kind is not RecordKind.STREAM or record.offset is None:
                raise ReplayRefused(f"{segment.key}: record #{record.seq} is not a stream message")
            if rate is not None:
                await rate.take()
            pid = record.offset + 1  # publishing ids start at 1
            batch.append(RawMessage(record.body, publishing_id=pid))
            in_flight.append((pid, record.seq))
            progress.published_seq = record.seq
            outcome.replayed += 1
            outcome.bytes += len(record.body)
            outcome.covered(record)
            if on_progress is not None:
                on_progress(1, len(record.body))
            if len(batch) >= BATCH:
                await send(batch)
                batch = []
                if len(in_flight) >= WINDOW:
                    room.clear()
                    await room.wait()
            now = time.monotonic()
            if now - last_save >= SAVE_EVERY:
                save_state(True)
                last_save = now
        if batch and not refused:
            await send(batch)
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while in_flight and not refused and time.monotonic() < deadline:
            room.clear()
            try:
                await asyncio.wait_for(room.wait(), 1)
            except TimeoutError:
                settle()
        save_state(True)
        if refused:
            raise ReplayRefused(f"{outcome.source}: " + refused[0])
        if in_flight:
            raise ReplayRefused(f"{outcome.source}: {len(in_flight)} messages unconfirmed after {CONFIRM_TIMEOUT}s")
    finally:
        await producer.close()
