"""Tap mode: warren's own durable queue, bound exactly like the source queue, so the archive receives
a copy of everything routed to the source while the application's consumers keep theirs.

A tap cannot see messages published through the default exchange straight to the source queue (that
"binding" is implicit and cannot be copied); the broker's firehose (`amq.rabbitmq.trace`, enabled with
`rabbitmqctl trace_on`) sees every publish, at a cost to the whole broker.

The tap queue is a classic queue whatever the vhost's default queue type: a quorum queue would count
every redelivery (after an archiver crash) against a delivery limit, which RabbitMQ 4 sets to 20 by
default, and then drop the message.
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.config import QueueSourceConfig
from bridge.own_queues import TAP_PREFIX, owned_queue_name
from protocol.aio.channel import Channel
from protocol.management import ManagementClient

log = logging.getLogger("warren.archiver")

TAP_ARGUMENTS = {"x-queue-type": "classic"}


def tap_queue_name(source_queue: str) -> str:
    """`warren.tap.<queue>`, shortened with a hash when that would exceed the 255 bytes a name may have."""
    return owned_queue_name(TAP_PREFIX, source_queue)


def _key(binding: dict[str, Any]) -> tuple[str, str, str]:
    return binding["source"], binding["routing_key"], repr(sorted((binding.get("arguments") or {}).items()))


async def prepare_tap(channel: Channel, config: QueueSourceConfig) -> str:
    """Declare the tap queue and make its bindings equal the source queue's; returns its name."""
    tap = tap_queue_name(config.queue)
    async with ManagementClient(config.management_uri) as management:
        wanted = [b for b in await management.queue_bindings(config.vhost, config.queue) if b["source"]]
        await channel.queue_declare(tap, durable=True, arguments=TAP_ARGUMENTS)
        have = [b for b in await management.queue_bindings(config.vhost, tap) if b["source"]]
    wanted_keys = {_key(b) for b in wanted}
    have_keys = {_key(b) for b in have}
    for b in wanted:
        if _key(b) not in have_keys:
            await channel.queue_bind(tap, b["source"], b["routing_key"], arguments=b.get("arguments") or None)
    for b in have:
        if _key(b) not in wanted_keys:
            await channel.queue_unbind(tap, b["source"], b["routing_key"], arguments=b.get("arguments") or None)
    if not wanted:
        log.warning(
            "the source queue has no bindings but the default exchange's: a tap sees nothing of it",
            extra={"queue": config.queue, "vhost": config.vhost},
        )
    return tap
