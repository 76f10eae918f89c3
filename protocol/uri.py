"""amqp:// and amqps:// URIs, as RabbitMQ documents them, parsed into connection parameters.

Query options follow RabbitMQ's URI query parameter spec: heartbeat, connection_timeout, channel_max,
frame_max, auth_mechanism, and for TLS cacertfile, certfile, keyfile, verify, server_name_indication.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from protocol.errors import InvalidURI

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class TLSOptions:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    server_name: str | None = None
    verify: bool = True

    def context(self) -> ssl.SSLContext:
        """The client's TLS context; a file that cannot be read is an InvalidURI naming it."""
        try:
            ctx = ssl.create_default_context(cafile=self.cafile)
            if self.certfile:
                ctx.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as err:
            files = ", ".join(f for f in (self.cafile, self.certfile, self.keyfile) if f)
            raise InvalidURI(f"cannot load the TLS files ({files}): {err}") from None
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class ConnectionParameters:
    host: str = "localhost"
    port: int = 5672
    vhost: str = "/"
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    heartbeat: int | None = 60
    frame_max: int = 131072
    channel_max: int = 2047
    connection_timeout: float = 10.0
    mechanism: str = "PLAIN"
    tls: TLSOptions | None = None

    def redacted(self) -> str:
        """The URI without the password, for logs and errors."""
        scheme = "amqps" if self.tls else "amqp"
        vhost = "%2F" if self.vhost == "/" else self.vhost
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{vhost}"

    def __str__(self) -> str:
        return self.redacted()


TLS_KEYS = ("cacertfile", "certfile", "keyfile", "verify", "server_name_indication")


def tls_options(
    query: dict[str, list[str]], host: str, redacted: str, *, enabled: bool, scheme: str
) -> TLSOptions | None:
    """The TLS options of a URI's query (RabbitMQ's names), for the amqps, https and
    rabbitmq-stream+tls schemes alike; `scheme` names the one that takes them, for the error."""
    given = sorted(set(TLS_KEYS) & set(query))
    if not enabled:
        if given:
            raise InvalidURI(f"{redacted}: TLS options {given} need the {scheme} scheme")
        return None
    verify = query.get("verify", ["verify_peer"])[-1]
    if verify not in ("verify_peer", "verify_none"):
        raise InvalidURI(f"{redacted}: verify must be verify_peer or verify_none, not {verify!r}")
    return TLSOptions(
        cafile=query.get("cacertfile", [None])[-1],
        certfile=query.get("certfile", [None])[-1],
        keyfile=query.get("keyfile", [None])[-1],
        server_name=query.get("server_name_indication", [None])[-1] or host,
        verify=verify == "verify_peer",
    )


def _int_option(query: dict[str, list[str]], name: str, redacted: str) -> int | None:
    if name not in query:
        return None
    value = query[name][-1]
    try:
        number = int(value)
    except ValueError:
        raise InvalidURI(f"{redacted}: query option {name}={value!r} is not a whole number") from None
    if number < 0:
        raise InvalidURI(f"{redacted}: query option {name}={value!r} must not be negative")
    return number


def parse_uri(uri: str) -> ConnectionParameters:
    """Parse `amqp[s]://user:pass@host:port/vhost?options`; an empty or missing vhost means '/'."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        # urlsplit's message may quote part of the password; say what to check instead.
        raise InvalidURI(
            "not a valid AMQP URI: check the port, and percent-encode '/', '?', '#' and '@' in the user and password"
        ) from None
    scheme = parts.scheme.lower()
    host = parts.hostname or "localhost"
    redacted = f"{scheme}://{unquote(parts.username or 'guest')}@{host}"
    if scheme not in DEFAULT_PORTS:
        raise InvalidURI(f"{redacted}: scheme must be amqp or amqps, not {parts.scheme!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if "/" in path:
        raise InvalidURI(f"{redacted}: a vhost containing '/' must be percent-encoded (%2F)")
    vhost = unquote(path) or "/"
    query = parse_qs(parts.query, keep_blank_values=True)
    known = {
        "heartbeat",
        "connection_timeout",
        "channel_max",
        "frame_max",
        "auth_mechanism",
        "cacertfile",
        "certfile",
        "keyfile",
        "verify",
        "server_name_indication",
    }
    unknown = sorted(set(query) - known)
    if unknown:
        raise InvalidURI(f"{redacted}: unknown query option(s) {unknown}; known: {sorted(known)}")
    heartbeat = _int_option(query, "heartbeat", redacted)
    timeout_ms = query.get("connection_timeout", [None])[-1]
    try:
        # RabbitMQ's URI spec gives connection_timeout in milliseconds
        timeout = float(timeout_ms) / 1000 if timeout_ms else 10.0
    except ValueError:
        raise InvalidURI(f"{redacted}: connection_timeout={timeout_ms!r} is not a number") from None
    mechanism = query.get("auth_mechanism", ["PLAIN"])[-1].upper()
    if mechanism not in ("PLAIN", "AMQPLAIN"):
        raise InvalidURI(f"{redacted}: auth_mechanism must be plain or amqplain, not {mechanism.lower()!r}")
    tls = tls_options(query, host, redacted, enabled=scheme == "amqps", scheme="amqps")
    return ConnectionParameters(
        host=host,
        port=port or DEFAULT_PORTS[scheme],
        vhost=vhost,
        username=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        heartbeat=60 if heartbeat is None else heartbeat,
        frame_max=_int_option(query, "frame_max", redacted) or 131072,
        channel_max=_int_option(query, "channel_max", redacted) or 2047,
        connection_timeout=timeout,
        mechanism=mechanism,
        tls=tls,
    )
