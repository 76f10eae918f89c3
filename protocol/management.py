"""The RabbitMQ management HTTP API: the few calls warren needs, with typed errors.

Definitions (topology) for the archive and for restoring it, queue bindings for tap mode, queue
details. Credentials come from the URI's user-info and never appear in errors or logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from protocol.errors import InvalidURI, ProtocolError


class ManagementError(ProtocolError):
    """The management API answered with an error, or could not be reached."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(f"management API {url}: {message}")
        self.url = url
        self.status = status


@dataclass(frozen=True)
class ManagementEndpoint:
    base: str  # scheme://host:port, no credentials
    username: str
    password: str

    @classmethod
    def parse(cls, uri: str) -> ManagementEndpoint:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURI(f"management URI must be http(s)://user:pass@host:port, got {redact(uri)!r}")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = f":{parts.port}" if parts.port else ""
        base = f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"
        return cls(base, unquote(parts.username or "guest"), unquote(parts.password or "guest"))


def redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


class ManagementClient:
    """One aiohttp session against one broker's management API."""

    def __init__(self, uri: str, *, timeout: float = 30.0) -> None:
        self.endpoint = ManagementEndpoint.parse(uri)
        self._session = aiohttp.ClientSession(
            auth=aiohttp.BasicAuth(self.endpoint.username, self.endpoint.password),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def __aenter__(self) -> ManagementClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def definitions(self) -> dict[str, Any]:
        return await self._request("GET", "/api/definitions")

    async def load_definitions(self, definitions: dict[str, Any]) -> None:
        await self._request("POST", "/api/definitions", definitions)

    async def vhosts(self) -> list[dict[str, Any]]:
        return await self._request("GET", "/api/vhosts")

    async def grant_all(self, vhost: str, user: str) -> None:
        """configure, write and read on everything in `vhost` for `user`."""
        body = {"configure": ".*", "write": ".*", "read": ".*"}
        await self._request("PUT", f"/api/permissions/{_seg(vhost)}/{_seg(user)}", body)

    async def listener_port(self, protocol: str) -> int | None:
        """The port the broker listens on for `protocol` ("stream", "amqp", ...), if it says."""
        overview = await self.overview()
        for listener in overview.get("listeners", []):
            if listener.get("protocol") == protocol:
                return int(listener["port"])
        return None

    async def overview(self) -> dict[str, Any]:
        return await self._request("GET", "/api/overview")

    async def queue(self, vhost: str, name: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/queues/{_seg(vhost)}/{_seg(name)}")

    async def queue_bindings(self, vhost: str, name: str) -> list[dict[str, Any]]:
        return await self._request("GET", f"/api/queues/{_seg(vhost)}/{_seg(name)}/bindings")

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        url = self.endpoint.base + path
        try:
            async with self._session.request(method, url, json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    raise ManagementError(_reason(text, response.status), url=url, status=response.status)
                return json.loads(text) if text else None
        except aiohttp.ClientError as err:
            raise ManagementError(f"cannot reach it: {err}", url=url) from err
        except TimeoutError as err:
            raise ManagementError("timed out", url=url) from err


def _seg(name: str) -> str:
    return quote(name, safe="")


def _reason(text: str, status: int) -> str:
    try:
        payload = json.loads(text)
        return f"{status} {payload.get('error', '')}: {payload.get('reason', '')}".strip()
    except (ValueError, AttributeError):
        return f"{status} {text[:200]}"
