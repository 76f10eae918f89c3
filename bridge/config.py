"""The archiver's configuration: TOML in the Shovel plugin's vocabulary, validated once at start.

A wrong key, a wrong type or a missing value is refused with the file, the key and what was expected.
URIs may name environment variables as `${NAME}`, so that secrets need not sit in the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from bridge.errors import ConfigError
from bridge.timespec import parse_time
from protocol.management import ManagementClient, ManagementError

Mode = Literal["move", "tap", "snapshot"]
AckMode = Literal["on-confirm", "on-publish", "no-ack"]
MODES: tuple[Mode, ...] = ("move", "tap", "snapshot")
ACK_MODES: tuple[AckMode, ...] = ("on-confirm", "on-publish", "no-ack")
DEFAULT_PREFETCH = 1000  # as the Shovel plugin
DEFAULT_RECONNECT_DELAY = 5.0  # seconds, as the Shovel plugin
DEFAULT_STREAM_PORT = 5552


@dataclass(frozen=True)
class BrokerConfig:
    uri: str
    management_uri: str
    stream_uri: str | None  # None: ask the management API for the stream port (see resolve_stream_uri)


@dataclass(frozen=True)
class ArchiveSettings:
    sinks: tuple[str, ...] = ("file://./warren-archive",)
    segment_max_bytes: int = 64 * 1024 * 1024
    segment_max_age: float = 60.0
    definitions_interval: float = 60.0  # seconds between polls of the broker's definitions; 0: never
    write_quorum: int | None = None  # sinks that must hold a segment before it counts; None: all


@dataclass(frozen=True)
class QueueSourceConfig:
    queue: str
    uri: str
    management_uri: str
    mode: Mode = "move"
    ack_mode: AckMode = "on-confirm"
    prefetch_count: int = DEFAULT_PREFETCH
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY
    delete_after: int | Literal["never", "queue-length"] = "never"

    @property
    def vhost(self) -> str:
        return vhost_of(self.uri)


@dataclass(frozen=True)
class StreamOffset:
    """Where a stream source starts when the archive holds nothing of it yet."""

    kind: Literal["first", "last", "next", "offset", "timestamp"] = "first"
    value: int | None = None  # the offset, or the time in ms


@dataclass(frozen=True)
class StreamSourceConfig:
    stream: str
    vhost: str
    uri: str | None  # rabbitmq-stream://; None until resolved from the broker's management API
    offset: StreamOffset = field(default_factory=StreamOffset)
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY


SourceConfig = QueueSourceConfig | StreamSourceConfig


@dataclass(frozen=True)
class ArchiverConfig:
    broker: BrokerConfig
    archive: ArchiveSettings
    sources: tuple[SourceConfig, ...]


def vhost_of(uri: str) -> str:
    path = urlsplit(uri).path
    return unquote(path[1:]) if len(path) > 1 else "/"


async def resolve_stream_uri(amqp_uri: str, management_uri: str) -> str:
    """The broker's stream endpoint: its host and credentials, on the port its management API reports
    for the stream protocol (5552 if it cannot tell)."""
    try:
        async with ManagementClient(management_uri) as management:
            port = await management.listener_port("stream")
    except ManagementError:
        port = None
    return derived_uri(amqp_uri, "rabbitmq-stream", port or DEFAULT_STREAM_PORT, keep_vhost=True)


def with_vhost(uri: str, vhost: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))


def derived_uri(amqp_uri: str, scheme: str, port: int, *, keep_vhost: bool) -> str:
    """The same host and credentials under another scheme and port: management and stream defaults."""
    parts = urlsplit(amqp_uri)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"  # IPv6: urlsplit drops the brackets
    path = "/" + quote(vhost_of(amqp_uri), safe="") if keep_vhost else ""
    return urlunsplit((scheme, f"{userinfo}{host}:{port}", path, "", ""))


class _Table:
    """One TOML table being read: every access names the file and key on failure, and leftovers are refused."""

    def __init__(self, data: dict[str, Any], where: str, source: str) -> None:
        self.data = dict(data)
        self.where = where
        self.source = source

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=self.key(name))

    def take(self, name: str, kind: type | tuple[type, ...], default: Any = ..., expected: str = "") -> Any:
        if name not in self.data:
            if default is ...:
                raise self.fail(name, f"is required ({expected or _type_name(kind)})")
            return default
        value = self.data.pop(name)
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(name, f"expected {expected or _type_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(name, f"expected {expected or _type_name(kind)}, got {type(value).__name__} {value!r}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> Any:
        value = self.take(name, str, default)
        if value not in choices:
            raise self.fail(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def positive(self, name: str, default: float, *, integer: bool = False, allow_zero: bool = False) -> Any:
        value = self.take(name, int if integer else (int, float), default, "a number" if not integer else "an integer")
        if value < 0 or (value == 0 and not allow_zero):
            raise self.fail(name, f"expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
        return value

    def uri(self, name: str, default: Any = ...) -> Any:
        value = self.take(name, str, default, "a URI")
        return value if value is None else expand_env(value, lambda msg: self.fail(name, msg))

    def done(self) -> None:
        if self.data:
            unknown = ", ".join(self.key(k) for k in sorted(self.data))
            raise ConfigError(f"unknown key(s): {unknown}", source=self.source)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table", bool: "true/false"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, fail: Callable[[str], ConfigError]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m[1] not in os.environ:
            raise fail(f"environment variable {m[1]} is not set")
        return os.environ[m[1]]

    return _ENV.sub(replace, value)


def load_config(path: str | Path) -> ArchiverConfig:
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("no such file", source=source) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"not valid TOML: {err}", source=source) from None
    return parse_config(data, source)


def parse_config(data: dict[str, Any], source: str = "<config>") -> ArchiverConfig:
    top = _Table(data, "", source)
    broker = _broker(_Table(top.take("broker", dict, expected="a [broker] table"), "broker", source))
    archive = _archive(_Table(top.take("archive", dict, {}), "archive", source))
    raw_sources = top.take("source", list, expected="one or more [[source]] tables")
    top.done()
    if not raw_sources:
        raise ConfigError("at least one [[source]] is required", source=source, key="source")
    sources = tuple(
        _source(_Table(s, f"source[{i}]", source), broker) if isinstance(s, dict) else _not_table(i, source)
        for i, s in enumerate(raw_sources)
    )
    _refuse_duplicates(sources, source)
    return ArchiverConfig(broker, archive, sources)


def _not_table(i: int, source: str) -> SourceConfig:
    raise ConfigError("expected a [[source]] table", source=source, key=f"source[{i}]")


def _broker(t: _Table) -> BrokerConfig:
    uri = t.uri("uri")
    if not uri.startswith(("amqp://", "amqps://")):
        raise t.fail("uri", "expected an amqp:// or amqps:// URI")
    management = t.uri("management-uri", None) or derived_uri(uri, "http", 15672, keep_vhost=False)
    stream = t.uri("stream-uri", None)
    t.done()
    return BrokerConfig(uri, management, stream)


def _archive(t: _Table) -> ArchiveSettings:
    sinks = t.take("sinks", list, list(ArchiveSettings.sinks), "a list of sink URIs")
    if not sinks or not all(isinstance(s, str) and s for s in sinks):
        raise t.fail("sinks", "expected a non-empty list of sink URIs")
    settings = ArchiveSettings(
        sinks=tuple(expand_env(s, lambda msg: t.fail("sinks", msg)) for s in sinks),
        segment_max_bytes=t.positive("segment-max-bytes", ArchiveSettings.segment_max_bytes, integer=True),
        segment_max_age=t.positive("segment-max-age", ArchiveSettings.segment_max_age),
        definitions_interval=t.positive("definitions-interval", ArchiveSettings.definitions_interval, allow_zero=True),
        write_quorum=_write_quorum(t, len(sinks)),
    )
    t.done()
    return settings


def _write_quorum(t: _Table, sinks: int) -> int | None:
    value = t.take("write-quorum", (str, int), "all", '"all" or a number of sinks')
    if value == "all":
        return None
    if isinstance(value, str) or not 1 <= value <= sinks:
        raise t.fail("write-quorum", f'expected "all" or a number from 1 to {sinks} (the sinks listed), got {value!r}')
    return value


def _source(t: _Table, broker: BrokerConfig) -> SourceConfig:
    if ("src-queue" in t.data) == ("src-stream" in t.data):
        raise ConfigError("give exactly one of src-queue or src-stream", source=t.source, key=t.where)
    reconnect = t.positive("reconnect-delay", DEFAULT_RECONNECT_DELAY)
    if "src-stream" in t.data:
        stream = t.take("src-stream", str)
        src_uri = t.uri("src-uri", None) or broker.stream_uri
        config: SourceConfig = StreamSourceConfig(
            stream=stream,
            vhost=vhost_of(src_uri or broker.uri),
            uri=src_uri,
            offset=_offset(t),
            reconnect_delay=reconnect,
        )
    else:
        config = QueueSourceConfig(
            queue=t.take("src-queue", str),
            uri=t.uri("src-uri", None) or broker.uri,
            management_uri=broker.management_uri,
            mode=t.choice("mode", MODES, "move"),
            ack_mode=t.choice("ack-mode", ACK_MODES, "on-confirm"),
            prefetch_count=t.positive("prefetch-count", DEFAULT_PREFETCH, integer=True),
            reconnect_delay=reconnect,
            delete_after=_delete_after(t),
        )
    t.done()
    return config


def _delete_after(t: _Table) -> int | Literal["never", "queue-length"]:
    value = t.take("src-delete-after", (str, int), "never", '"never", "queue-length" or a number of messages')
    if isinstance(value, str) and value not in ("never", "queue-length"):
        raise t.fail("src-delete-after", f'expected "never", "queue-length" or a number, got {value!r}')
    if isinstance(value, int) and value <= 0:
        raise t.fail("src-delete-after", f"expected a positive number of messages, got {value}")
    return value


def _offset(t: _Table) -> StreamOffset:
    value = t.take("offset", (str, int), "first", '"first", "last", "next", an offset or a time')
    return parse_offset(value, lambda msg: t.fail("offset", msg))


def parse_offset(value: str | int, fail: Callable[[str], ConfigError]) -> StreamOffset:
    if isinstance(value, int):
        if value < 0:
            raise fail(f"expected a non-negative offset, got {value}")
        return StreamOffset("offset", value)
    if value in ("first", "last", "next"):
        return StreamOffset(value)
    if value.isdigit():
        return StreamOffset("offset", int(value))
    try:
        return StreamOffset("timestamp", parse_time(value) // 1_000_000)
    except ConfigError:
        raise fail(f'expected "first", "last", "next", an offset or a time (RFC 3339 or -1h), got {value!r}') from None


def _refuse_duplicates(sources: Sequence[SourceConfig], source: str) -> None:
    seen: set[tuple[str, str, str]] = set()
    for i, s in enumerate(sources):
        ident = ("stream", s.vhost, s.stream) if isinstance(s, StreamSourceConfig) else ("queue", s.vhost, s.queue)
        if ident in seen:
            raise ConfigError(
                f"{ident[0]} {ident[2]!r} in vhost {ident[1]!r} is configured twice", source=source, key=f"source[{i}]"
            )
        seen.add(ident)


def config_from_args(
    broker_uri: str,
    queues: Sequence[str],
    streams: Sequence[str],
    sinks: Sequence[str],
    *,
    management_uri: str | None = None,
    stream_uri: str | None = None,
    mode: Mode = "move",
    ack_mode: AckMode = "on-confirm",
    prefetch_count: int = DEFAULT_PREFETCH,
    offset: str = "first",
    segment_max_age: float | None = None,
) -> ArchiverConfig:
    """The simple case, without a file: `warren archive --broker URI --queue Q --stream S --sink URI`."""
    data: dict[str, Any] = {
        "broker": {"uri": broker_uri}
        | ({"management-uri": management_uri} if management_uri else {})
        | ({"stream-uri": stream_uri} if stream_uri else {}),
        "archive": {"sinks": list(sinks) or list(ArchiveSettings.sinks)}
        | ({"segment-max-age": segment_max_age} if segment_max_age else {}),
        "source": [
            {"src-queue": q, "mode": mode, "ack-mode": ack_mode, "prefetch-count": prefetch_count} for q in queues
        ]
        + [{"src-stream": s, "offset": offset} for s in streams],
    }
    return parse_config(data, "command line")
