"""The stream protocol side: rabbitmq-stream:// URIs turned into rstream consumers and producers."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from rstream import Consumer, Producer

from protocol.errors import InvalidURI

DEFAULT_PORT = 5552


@dataclass(frozen=True)
class StreamEndpoint:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    vhost: str

    @classmethod
    def parse(cls, uri: str) -> StreamEndpoint:
        parts = urlsplit(uri)
        if parts.scheme != "rabbitmq-stream" or not parts.hostname:
            raise InvalidURI(f"a stream URI is rabbitmq-stream://user:pass@host:5552/vhost, not {parts.scheme}://...")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise InvalidURI("stream URI: bad port (percent-encode '/', '?', '#', '@' in the password)") from None
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        return cls(parts.hostname, port, unquote(parts.username or "guest"), unquote(parts.password or "guest"), vhost)

    def with_vhost(self, vhost: str) -> StreamEndpoint:
        return StreamEndpoint(self.host, self.port, self.username, self.password, vhost)

    def redacted(self) -> str:
        return f"rabbitmq-stream://{self.username}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"

    def consumer(self, connection_name: str) -> Consumer:
        return Consumer(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            vhost=self.vhost,
            connection_name=connection_name,
        )

    def producer(self, connection_name: str) -> Producer:
        return Producer(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            vhost=self.vhost,
            connection_name=connection_name,
        )
