"""A snapshot must leave the queue as it found it. It reads every message without acknowledging and
lets the broker requeue them all, which a quorum queue counts as a delivery of each; a quorum queue
with a delivery limit (RabbitMQ 4.0 gives every quorum queue one of 20 by default) dead-letters or
drops a message once it was delivered that often. So a snapshot of such a queue is refused, naming
the queue and the limit, before anything is read.
"""

from __future__ import annotations

from typing import Any

from bridge.archiver.supervision import SourceRefused
from bridge.config import QueueSourceConfig
from bridge.errors import EXIT_USAGE
from protocol.management import ManagementClient, ManagementError

DEFAULT_DELIVERY_LIMIT_4 = 20  # quorum queues in RabbitMQ 4.0 and later, unless set otherwise
NOT_FOUND = 404


class SnapshotUnsafe(SourceRefused):
    """A snapshot of this queue would change it (or whether it would cannot be told)."""

    exit_code = EXIT_USAGE


def major_version(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def delivery_limit(queue: dict[str, Any], broker_major: int) -> int | None:
    """The delivery limit a quorum queue has, or None for none (or another queue type)."""
    if queue.get("type") != "quorum":
        return None
    values = [(queue.get("arguments") or {}).get("x-delivery-limit")]
    values.append((queue.get("effective_policy_definition") or {}).get("delivery-limit"))
    set_values = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if broker_major >= 4:
        finite = [v for v in set_values if v >= 0]  # 4.0: a negative limit means none
        if finite:
            return min(finite)
        return None if set_values else DEFAULT_DELIVERY_LIMIT_4
    # Before 4.0 a quorum queue has no limit unless given one; a negative one limits to nothing.
    return min((max(v, 0) for v in set_values), default=None)


async def check_snapshot_safe(config: QueueSourceConfig) -> None:
    """Raise SnapshotUnsafe if a snapshot of the configured queue would count against a delivery limit."""
    where = f"queue {config.queue!r} in vhost {config.vhost!r}"
    try:
        async with ManagementClient(config.management_uri) as management:
            version = (await management.overview()).get("rabbitmq_version", "")
            queue = await management.queue(config.vhost, config.queue)
    except ManagementError as err:
        if err.status == NOT_FOUND:
            return  # no such queue: the declare that follows says so, as for any mode
        raise SnapshotUnsafe(
            f"snapshot of {where} refused: cannot tell whether it is a quorum queue with a delivery limit, "
            f"which a snapshot would count against ({err})"
        ) from err
    limit = delivery_limit(queue, major_version(version))
    if limit is None:
        return
    default = " (RabbitMQ 4's default)" if major_version(version) >= 4 and limit == DEFAULT_DELIVERY_LIMIT_4 else ""
    raise SnapshotUnsafe(
        f"snapshot of quorum {where} refused: it has a delivery limit of {limit}{default}, and every snapshot "
        f"returns each message to the queue, which counts as a delivery, so after {limit} snapshots the broker would "
        'dead-letter or drop them. Archive it with mode = "tap" instead, or lift the limit for it (a policy with '
        "delivery-limit = -1 on RabbitMQ 4)"
    )
