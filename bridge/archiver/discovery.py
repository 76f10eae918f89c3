"""`src-queue-pattern`: the archiver finds the queues (and streams) a pattern matches, the way a RabbitMQ
policy's pattern applies to queues as they are declared.

Every `discovery-interval` seconds it lists each pattern's vhost through the management API. A queue
that matches and is not archived yet becomes a source of its own, with the pattern's settings, run
like any configured source (isolated, retried, its own archive directory); one that is gone from a
successful listing is stopped in order (what it holds is committed and acknowledged first). A failed
listing changes nothing: a management API that is down never stops a source. Never matched: warren's
own queues, exclusive queues (their owner's connection alone may consume them), server-named queues
(`amq.gen-...`), and queues the configuration names itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import replace
from typing import Any

from bridge.config import PatternSourceConfig, SourceConfig, StreamSourceConfig
from bridge.own_queues import is_own_queue
from protocol.management import ManagementClient, ManagementError

log = logging.getLogger("warren.archiver")

SourceKey = tuple[str, str, str]  # (kind, vhost, name): "queue" or "stream"
# Runs one discovered source until its stop event is set (the service's part: writer, supervision, close).
RunSource = Callable[[SourceConfig, asyncio.Event], Coroutine[Any, Any, None]]


def source_key(config: SourceConfig) -> SourceKey:
    if isinstance(config, StreamSourceConfig):
        return ("stream", config.vhost, config.stream)
    return ("queue", config.vhost, config.queue)


def matching(
    patterns: Sequence[PatternSourceConfig], vhost: str, listing: Iterable[dict[str, Any]]
) -> dict[SourceKey, SourceConfig]:
    """The sources the listing of `vhost` holds for `patterns` (the first matching pattern's settings)."""
    found: dict[SourceKey, SourceConfig] = {}
    for queue in listing:
        name, queue_type = queue.get("name"), queue.get("type") or "classic"
        if not isinstance(name, str) or not name or queue.get("exclusive") or is_own_queue(name):
            continue
        if name.startswith("amq."):
            continue
        for pattern in patterns:
            if pattern.vhost != vhost or not pattern.matches(name, queue_type):
                continue
            config: SourceConfig
            if queue_type == "stream":
                config = replace(pattern.stream, stream=name)
            else:
                config = replace(pattern.queue, queue=name)
            found.setdefault(source_key(config), config)
            break
    return found


class Discovery:
    """Keeps one running source per matching queue; `run()` returns once `stopping` is set and every
    discovered source has stopped."""

    def __init__(
        self,
        management_uri: str,
        patterns: Sequence[PatternSourceConfig],
        configured: Iterable[SourceConfig],
        run_source: RunSource,
        stopping: asyncio.Event,
        *,
        interval: float,
    ) -> None:
        self.management_uri = management_uri
        self.patterns = list(patterns)
        self.configured = {source_key(c) for c in configured}
        self.run_source = run_source
        self.stopping = stopping
        self.interval = interval
        self.running: dict[SourceKey, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._failing = False

    async def run(self) -> None:
        try:
            async with ManagementClient(self.management_uri, timeout=30.0) as management:
                while not self.stopping.is_set():
                    await self.look(management)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.interval)
        finally:
            for _, stop in self.running.values():
                stop.set()
            await asyncio.gather(*(task for task, _ in self.running.values()), return_exceptions=True)

    async def look(self, management: ManagementClient) -> None:
        """One pass: start what appeared, stop what went; a vhost that cannot be listed is left as it is."""
        for vhost in sorted({p.vhost for p in self.patterns}):
            try:
                listing = await management.queues(vhost)
            except ManagementError as err:
                if not self._failing:
                    log.warning(
                        "cannot list queues to discover sources; the ones found keep running",
                        extra={"vhost": vhost, "error": str(err)},
                    )
                self._failing = True
                continue
            if self._failing:
                log.info("listing queues again", extra={"vhost": vhost})
                self._failing = False
            found = matching(self.patterns, vhost, listing if isinstance(listing, list) else [])
            for key, config in found.items():
                if key not in self.configured and key not in self.running:
                    self._start(key, config)
            for key in [k for k in self.running if k[1] == vhost and k not in found]:
                task, _ = self.running[key]
                if task.done():  # it had stopped for good; a queue of that name declared later starts afresh
                    del self.running[key]
                else:
                    self._stop(key)

    def _start(self, key: SourceKey, config: SourceConfig) -> None:
        kind, vhost, name = key
        log.info("found a source", extra={"source": f"{kind} {name!r} in vhost {vhost!r}"})
        stop = asyncio.Event()
        task = asyncio.create_task(self.run_source(config, stop), name=f"{kind} {name!r} in vhost {vhost!r}")
        task.add_done_callback(lambda _: self._ended(key, task))
        self.running[key] = (task, stop)

    def _stop(self, key: SourceKey) -> None:
        kind, vhost, name = key
        log.info("source gone from the broker: stopping it", extra={"source": f"{kind} {name!r} in vhost {vhost!r}"})
        self.running[key][1].set()

    def _ended(self, key: SourceKey, task: asyncio.Task[None]) -> None:
        # Stopped by us: forgotten. Stopped for good on its own: kept, so it is not restarted every pass
        # (the same as a configured source), until the queue is gone.
        current = self.running.get(key)
        if current is not None and current[0] is task and current[1].is_set():
            del self.running[key]
