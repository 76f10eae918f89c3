"""Where --metrics-listen (or `metrics-listen` in the configuration) serves: loopback unless told
otherwise, since metrics name queues and hosts; a bare port listens on 127.0.0.1."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from bridge.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str, what: str = "metrics-listen") -> ListenAddress:
    """'127.0.0.1:9419', '[::1]:9419', 'localhost:9419' or '9419' (loopback)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, value
    host = host.removeprefix("[").removesuffix("]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what} {value!r}: expected HOST:PORT or PORT, e.g. 127.0.0.1:9419") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{what} {value!r}: the port must be between 1 and 65535")
    return ListenAddress(host, port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_app(app: web.Application, address: ListenAddress, what: str) -> tuple[web.AppRunner, int]:
    """Serve `app` at `address` (a taken port is a ConfigError naming `what`): the runner, to clean up
    when done, and the port bound (differs from the one asked for when that is 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, address.host, address.port).start()
    except OSError as err:
        await runner.cleanup()
        raise ConfigError(f"{what} {address}: cannot listen there ({err.strerror})") from None
    return runner, runner.addresses[0][1]
