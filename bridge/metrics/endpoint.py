"""`--metrics-listen HOST:PORT`: Prometheus metrics on /metrics, and /healthz and /readyz that answer
200 or 503 with one line saying why, served from the archiver's (or replay's) own event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bridge.metrics.listen import ListenAddress, is_loopback, start_app

log = logging.getLogger("warren.metrics")


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


class MetricsEndpoint:
    """The HTTP server; `start()` binds (a taken port is a ConfigError naming it), `stop()` closes."""

    def __init__(
        self,
        address: ListenAddress,
        registry: CollectorRegistry,
        liveness: Callable[[], Health],
        readiness: Callable[[], Health],
    ) -> None:
        self.address = address
        self._registry = registry
        self._liveness, self._readiness = liveness, readiness
        self._runner: web.AppRunner | None = None
        self.port = address.port  # the bound port (differs when asked for 0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner, self.port = await start_app(app, self.address, "metrics-listen")
        if not is_loopback(self.address.host):
            log.warning("metrics served beyond this host", extra={"listen": str(self.address)})
        log.info("metrics served", extra={"listen": str(ListenAddress(self.address.host, self.port))})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return self._health(self._liveness())

    async def _readyz(self, _: web.Request) -> web.Response:
        return self._health(self._readiness())

    @staticmethod
    def _health(health: Health) -> web.Response:
        text = ("ok: " if health.ok else "not ok: ") + health.detail + "\n"
        return web.Response(text=text, status=200 if health.ok else 503)
