"""The RabbitMQ management HTTP API: the few calls warren needs, with typed errors.

Definitions (topology) for the archive and for restoring it, queue bindings for tap mode, queue
details. Credentials come from the URI's user-info and never appear in errors or logs.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiohttp

from protocol.errors import InvalidURI, ProtocolError
from protocol.uri import TLSOptions, tls_options


class ManagementError(ProtocolError):
    """The management API answered with an error (`status`, and the API's `reason`), or could not be
    reached (`status` None)."""

    def __init__(self, message: str, *, url: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(f"management API {url}: {message}")
        self.url = url
        self.status = status
        self.reason = reason

    @property
    def credentials_refused(self) -> bool:
        """401 (wrong user or password) or 403 (a user without the management tags this needs)."""
        return self.status in (401, 403)

    @property
    def refused(self) -> bool:
        """The API understood the request and refused it (4xx other than credentials): it says why."""
        return self.status is not None and 400 <= self.status < 500 and not self.credentials_refused


@dataclass(frozen=True)
class ManagementEndpoint:
    base: str  # scheme://host:port, no credentials
    username: str
    password: str
    tls: TLSOptions | None = None  # https://, with the amqps:// query options (cacertfile, verify, ...)

    @classmethod
    def parse(cls, uri: str) -> ManagementEndpoint:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidURI(f"management URI must be http(s)://user:pass@host:port, got {redact(uri)!r}")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = f":{parts.port}" if parts.port else ""
        base = f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"
        https = parts.scheme == "https"
        tls = tls_options(parse_qs(parts.query), parts.hostname, base, enabled=https, scheme="https")
        return cls(base, unquote(parts.username or "guest"), unquote(parts.password or "guest"), tls)


def redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


class ManagementClient:
    """One aiohttp session against one broker's management API."""

    def __init__(self, uri: str, *, timeout: float = 30.0) -> None:
        self.endpoint = ManagementEndpoint.parse(uri)
        tls = self.endpoint.tls
        self._session = aiohttp.ClientSession(
            auth=aiohttp.BasicAuth(self.endpoint.username, self.endpoint.password),
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(ssl=tls.context()) if tls else None,
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

    async def users(self) -> list[dict[str, Any]]:
        return list(await self._request("GET", "/api/users"))

    async def listener_port(self, protocol: str) -> int | None:
        """The port the broker listens on for `protocol` ("stream", "amqp", ...), if it says."""
        overview = await self.overview()
        for listener in overview.get("listeners", []):
            if listener.get("protocol") == protocol:
                return int(listener["port"])
        return None

    async def overview(self) -> dict[str, Any]:
        return await self._request("GET", "/api/overview")

    async def server_version(self) -> tuple[int, ...] | None:
        """The broker's RabbitMQ version as numbers, e.g. (4, 0, 5); None if it does not say."""
        return parse_version((await self.overview()).get("rabbitmq_version"))

    async def queue(self, vhost: str, name: str) -> dict[str, Any]:
        return await self._request("GET", f"/api/queues/{_seg(vhost)}/{_seg(name)}")

    async def queues(self, vhost: str) -> list[dict[str, Any]]:
        """The vhost's queues and streams, with the fields discovery needs only (a broker may hold thousands)."""
        return await self._request("GET", f"/api/queues/{_seg(vhost)}?columns=name,type,exclusive,vhost")

    async def queue_bindings(self, vhost: str, name: str) -> list[dict[str, Any]]:
        return await self._request("GET", f"/api/queues/{_seg(vhost)}/{_seg(name)}/bindings")

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        url = self.endpoint.base + path
        try:
            async with self._session.request(method, url, json=body) as response:
                text = await response.text()
                if response.status >= 400:
                    reason = _reason(text)
                    raise ManagementError(
                        f"{response.status} {reason}".strip(), url=url, status=response.status, reason=reason
                    )
                return json.loads(text) if text else None
        except aiohttp.ClientError as err:
            raise ManagementError(f"cannot reach it: {err}", url=url) from err
        except TimeoutError as err:
            raise ManagementError("timed out", url=url) from err


def _seg(name: str) -> str:
    return quote(name, safe="")


def parse_version(text: object) -> tuple[int, ...] | None:
    """'4.0.5' as (4, 0, 5); '3.13.0-rc.1' or '4.1.0+2.g1234' by their leading numbers; None if none."""
    match = re.match(r"\d+(?:\.\d+)*", text) if isinstance(text, str) else None
    return tuple(int(part) for part in match[0].split(".")) if match else None


def _reason(text: str) -> str:
    """The API's error and reason in one readable line.

    RabbitMQ sometimes sends the reason as an Erlang binary printed and HTML-escaped, e.g.
    `<<"Validation failed\\n\\n[{&lt;&lt;\\"ha-mode\\"&gt;&gt;,...}] are not recognised policy settings">>`.
    """
    try:
        payload = json.loads(text)
        error, reason = str(payload.get("error", "")), str(payload.get("reason", ""))
    except (ValueError, AttributeError):
        return " ".join(text[:200].split())
    reason = html.unescape(reason)
    if reason.startswith('<<"') and reason.endswith('">>'):
        reason = reason[3:-3].replace("\\n", "\n").replace('\\"', '"')
    reason = re.sub(r'<<"(.*?)">>', r'"\1"', reason)
    reason = " ".join(reason.split())
    return f"{error}: {reason}" if error and reason else error or reason
