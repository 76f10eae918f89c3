"""Republish a queue source's records over AMQP 0-9-1, byte-identical, with publisher confirms.

By default each record goes straight back into the queue of the same name (default exchange), which
restores the queue's content exactly; with `via_exchange` to its original exchange and routing key.
Every publish is mandatory: a return or a nack names the message and stops the source.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from bridge.archive.layout import SegmentKey
from bridge.archive.record import Record, RecordKind
from bridge.errors import WarrenError
from bridge.replay.confirms import ConfirmWindow
from bridge.replay.dead_letters import Origins
from bridge.replay.outcome import SourceOutcome
from bridge.replay.pacing import RateLimit
from bridge.replay.state import SourceProgress
from protocol import connect
from protocol.core.events import Confirm, Returned
from protocol.core.header_table import without_delivery_count
from protocol.errors import PublishNacked

NO_ROUTE = 312
NO_ROUTE_HINT = " (does the queue exist on the target? --definitions restores it)"
CONFIRM_WINDOW = 1000
SAVE_EVERY = 0.25  # seconds between state-file writes while publishing


class ReplayRefused(WarrenError):
    """The target refused a message (returned as unroutable, or nacked): the source stops there."""

    exit_code = 3


@dataclass(frozen=True)
class QueueRoute:
    vhost_uri: str  # the target broker, with the vhost this source goes to
    queue: str  # the target queue (after --map-queue)
    via_exchange: bool = False
    exchange_map: dict[str, str] | None = None
    to_origin: Origins | None = None  # --to-origin: each dead-lettered record back where it died

    def destination(self, record: Record, outcome: SourceOutcome) -> tuple[str, str, bytes] | None:
        """Exchange, routing key and property section to publish `record` with; None to pass it over
        (--to-origin: a record that never died, or died for another reason)."""
        if self.to_origin is not None:
            return self.to_origin.route(record, outcome)
        if not self.via_exchange:
            return "", self.queue, record.raw_properties
        exchange = (self.exchange_map or {}).get(record.exchange, record.exchange)
        return exchange, record.routing_key, record.raw_properties


async def replay_queue(
    records: AsyncIterator[tuple[SegmentKey, list[Record]]],
    route: QueueRoute,
    outcome: SourceOutcome,
    progress: SourceProgress,
    save_state: Callable[[bool], None],
    *,
    keep_duplicates: bool = False,
    rate: RateLimit | None = None,
    confirm_window: int = CONFIRM_WINDOW,
    on_progress: Callable[[int, int], None] | None = None,
    keep_delivery_count: bool = False,
) -> None:
    conn = await connect(route.vhost_uri, name="warren replay")
    try:
        channel = await conn.channel()
        await channel.confirm_select(window=confirm_window)
        # A returned message is acked too (after its basic.return): it settles, but as a refusal, so
        # neither it nor anything after it counts as replayed.
        window = ConfirmWindow(progress, outcome)

        def on_return(event: Returned) -> None:
            m = event.message
            window.refuse(
                f"message {m.properties.message_id or '(no message-id)'} to exchange {m.exchange!r} with routing key "
                f"{m.routing_key!r} was returned: {event.reply_code} {event.reply_text}"
                + (NO_ROUTE_HINT if event.reply_code == NO_ROUTE else "")
            )

        last_save = time.monotonic()

        def on_confirm(event: Confirm) -> None:
            if not event.ack:
                window.refuse(f"the target refused (nacked) publish #{event.delivery_tag}")
            # The state file follows every confirm, so a kill -9 can only leave the unconfirmed window
            # in doubt (a cheap write: the page cache survives a killed process; fsync follows below).
            if window.settle_through(channel.confirmed_through):
                save_state(False)

        channel.on_return = on_return
        channel.on_confirm = on_confirm

        async for segment, batch in records:
            if window.refused:
                break
            sent = sent_bytes = 0
            for record in batch:
                if record.kind is not RecordKind.AMQP091:
                    raise ReplayRefused(f"{segment.key}: record #{record.seq} is not an AMQP 0-9-1 message")
                if record.copy_of is not None and not keep_duplicates:
                    outcome.skipped_duplicates += 1  # the archiver proved it a copy of an earlier record
                    window.passed_over(channel.published_seq, record.seq)
                    continue
                destination = route.destination(record, outcome)
                if destination is None:
                    window.passed_over(channel.published_seq, record.seq)
                    continue
                exchange, routing_key, raw_properties = destination
                if record.possible_copy_of is not None:
                    outcome.possible_duplicates += 1
                if rate is not None:
                    await rate.take()
                if record.seq > progress.published_seq:
                    # Written ahead: a rerun knows that nothing past this mark can have reached the target.
                    progress.published_seq = record.seq + confirm_window
                    save_state(True)
                if not keep_delivery_count:  # the source broker's count would make a restored message look like poison
                    raw_properties = without_delivery_count(raw_properties)
                seq = await channel.publish(
                    exchange, routing_key, record.body, raw_properties=raw_properties, mandatory=True
                )
                window.sent(seq, record)
                sent += 1
                sent_bytes += len(record.body)
                if window.refused:
                    break
            if on_progress is not None:
                on_progress(sent, sent_bytes)
            now = time.monotonic()
            if now - last_save >= SAVE_EVERY:
                save_state(True)
                last_save = now
        if not window.refused:
            try:
                await channel.wait_for_confirms()
            except PublishNacked as err:
                window.refuse(f"the target refused (nacked) {len(err.delivery_tags)} message(s)")
        window.settle_through(channel.confirmed_through)
        window.finish()
        save_state(True)
        if window.refused:
            raise ReplayRefused(f"{outcome.source}: " + window.refusals[0])
    finally:
        await conn.close()
