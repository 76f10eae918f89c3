"""Every sink request timed and counted by outcome, per sink: a Sink that wraps a backend (or each member
of a mirrored set, so that a slow or failing member shows as itself).

Outcomes: "ok"; "absent" (ObjectNotFound, or a conditional create that found the object: answers, not
failures); "error" (any other SinkError, which is re-raised unchanged).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from sinks import ObjectExists, ObjectInfo, ObjectNotFound, Sink, SinkError

T = TypeVar("T")

# A local disk answers in well under a millisecond; object storage in tens of milliseconds, or seconds
# when it struggles.
REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "warren_sink_requests",
            "Requests to a sink, by operation and outcome",
            ["sink", "operation", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "warren_sink_request_seconds",
            "Time a sink request took, whatever its outcome",
            ["sink", "operation"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )

    def timed(self, sink: Sink) -> Sink:
        return TimedSink(sink, self)


class TimedSink(Sink):
    def __init__(self, inner: Sink, metrics: SinkMetrics) -> None:
        self.inner = inner
        self._metrics = metrics

    @property
    def url(self) -> str:
        return self.inner.url

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        outcome = "error"
        try:
            result = await call()
            outcome = "ok"
            return result
        except (ObjectNotFound, ObjectExists):
            outcome = "absent"
            raise
        except SinkError:
            raise
        finally:
            self._metrics.requests.labels(self.url, operation, outcome).inc()
            self._metrics.seconds.labels(self.url, operation).observe(time.monotonic() - started)

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        await self._timed("put", lambda: self.inner.put(key, data, if_absent=if_absent))

    async def get(self, key: str) -> bytes:
        return await self._timed("get", lambda: self.inner.get(key))

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        return await self._timed("get", lambda: self.inner.get_range(key, start, length))

    async def head(self, key: str) -> ObjectInfo | None:
        return await self._timed("head", lambda: self.inner.head(key))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        # A listing is many pages; its time is that of the whole walk.
        started = time.monotonic()
        outcome = "error"
        try:
            async for info in self.inner.list(prefix):
                yield info
            outcome = "ok"
        except GeneratorExit:  # the caller had what it wanted
            outcome = "ok"
            raise
        finally:
            self._metrics.requests.labels(self.url, "list", outcome).inc()
            self._metrics.seconds.labels(self.url, "list").observe(time.monotonic() - started)

    async def delete(self, key: str) -> None:
        await self._timed("delete", lambda: self.inner.delete(key))

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()
