"""Consumer lag where the broker reports it: every BACKLOG_EVERY seconds, the management API's count of
the messages in each archived queue that warren has not made durable yet (ready, and delivered to us
but not acknowledged). Streams have no such count in the management API of 3.10; they are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from bridge.archiver.queue_source import QueueSource
from bridge.archiver.stream_source import StreamSource
from protocol.management import ManagementClient, ManagementError

log = logging.getLogger("warren.metrics")

BACKLOG_EVERY = 15.0
FIRST_POLL_AFTER = 1.0  # the sources have connected by then, usually


async def poll_backlog(
    management_uri: str, sources: Sequence[QueueSource | StreamSource], backlog: dict[str, int], stopping: asyncio.Event
) -> None:
    """Keep `backlog` (source name -> messages) current until `stopping`; a failed poll is logged once
    and the figure dropped, so a stale number is never shown as current."""
    warned = False
    wait = FIRST_POLL_AFTER
    async with ManagementClient(management_uri, timeout=10.0) as management:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
            if stopping.is_set():
                return
            wait = BACKLOG_EVERY
            for source in [s for s in sources if isinstance(s, QueueSource)]:
                queue = source.consuming_from
                if queue is None:
                    continue
                try:
                    info = await management.queue(source.config.vhost, queue)
                except ManagementError as err:
                    backlog.pop(source.name, None)
                    if not warned:
                        log.warning("cannot read queue depths for the metrics", extra={"error": str(err)})
                        warned = True
                    continue
                backlog[source.name] = int(info.get("messages_ready", 0)) + int(info.get("messages_unacknowledged", 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), BACKLOG_EVERY)
