"""The archiver's configuration: TOML in the Shovel plugin's vocabulary, validated once at start.

A wrong key, a wrong type or a missing value is refused with the file, the key and what was expected.
URIs may name environment variables as `${NAME}`, so that secrets need not sit in the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from bridge.archive.pruned import MIN_RETENTION_NS
from bridge.errors import ConfigError
from bridge.metrics.listen import parse_listen
from bridge.timespec import parse_duration, parse_time
from protocol.management import ManagementClient, ManagementError

Mode = Literal["move", "tap", "snapshot"]
AckMode = Literal["on-confirm", "on-publish", "no-ack"]
MODES: tuple[Mode, ...] = ("move", "tap", "snapshot")
ACK_MODES: tuple[AckMode, ...] = ("on-confirm", "on-publish", "no-ack")
DEFAULT_PREFETCH = 1000  # as the Shovel plugin
DEFAULT_RECONNECT_DELAY = 5.0  # seconds, as the Shovel plugin
DEFAULT_STREAM_TLS_PORT = 5551
DEFAULT_STREAM_PORT = 5552


@dataclass(frozen=True)
class BrokerConfig:
    uri: str
    management_uri: str
    stream_uri: str | None  # None: ask the management API for the stream port (see resolve_stream_uri)


@dataclass(frozen=True)
class ArchiveSettings:
    sinks: tuple[str, ...] = ("file://./warren-archive",)
    # Built in memory, and copied once when finished: a source holds about three segments' worth at
    # its busiest. Compaction makes the large objects later.
    segment_max_bytes: int = 16 * 1024 * 1024
    segment_max_age: float = 60.0
    segment_idle: float = 1.0  # 0: segments roll by size and age only
    definitions_interval: float = 60.0  # seconds between polls of the broker's definitions; 0: never
    keep_password_hashes: bool = False  # users' password hashes in the saved definitions (blanked by default)
    write_quorum: int | None = None  # sinks that must hold a segment before it counts; None: all
    compact: bool = True  # merge the segments of each sealed hour of its sources (compaction.py)
    compact_max_bytes: int = 64 * 1024 * 1024
    retention_ns: int | None = None  # sealed hours older than this are removed (retention.py); None: kept
    metrics_listen: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz; None: not served
    discovery_interval: float = 30.0  # seconds between looks for queues matching a src-queue-pattern
    leases: bool = True  # each source archived by the one archiver holding its lease (lease.py)


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
    exclusive: bool = True  # consume as the queue's only consumer, which proves copies after a crash
    lease: bool = True  # archive only while holding the source's lease (bridge/archiver/lease.py)

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
    lease_uri: str | None = None  # amqp:// of the vhost holding the stream's lease (lease.py); None: no lease


SourceConfig = QueueSourceConfig | StreamSourceConfig

QUEUE_TYPES = ("classic", "quorum", "stream")


@dataclass(frozen=True)
class PatternSourceConfig:
    """`src-queue-pattern`: every queue (and, if asked, stream) of a vhost whose name matches, as the
    archiver finds them (bridge/archiver/discovery.py), each archived as a source of its own with the
    settings of `queue` (or, for streams, `stream`); the way a RabbitMQ policy's pattern matches."""

    pattern: str  # a regular expression, searched in the name like a policy's pattern: anchor it with ^ and $
    vhost: str
    queue_types: tuple[str, ...]  # of QUEUE_TYPES
    queue: QueueSourceConfig  # the settings each matching queue is archived with (its name left empty)
    stream: StreamSourceConfig  # ... and each matching stream

    def matches(self, name: str, queue_type: str) -> bool:
        return queue_type in self.queue_types and re.search(self.pattern, name) is not None


@dataclass(frozen=True)
class ArchiverConfig:
    broker: BrokerConfig
    archive: ArchiveSettings
    sources: tuple[SourceConfig, ...]
    patterns: tuple[PatternSourceConfig, ...] = ()


def vhost_of(uri: str) -> str:
    path = urlsplit(uri).path
    return unquote(path[1:]) if len(path) > 1 else "/"


async def resolve_stream_uri(amqp_uri: str, management_uri: str) -> str:
    """The broker's stream endpoint: its host and credentials, on the port its management API reports
    for the stream protocol (5552 if it cannot tell). Over TLS (amqps://) the stream's TLS listener,
    with the same TLS options (5551 if it cannot tell)."""
    tls = urlsplit(amqp_uri).scheme == "amqps"
    try:
        async with ManagementClient(management_uri) as management:
            port = await management.listener_port("stream/ssl" if tls else "stream")
    except ManagementError:
        port = None
    return default_stream_uri(amqp_uri, port)


def default_stream_uri(amqp_uri: str, port: int | None = None) -> str:
    if urlsplit(amqp_uri).scheme == "amqps":
        derived = derived_uri(amqp_uri, "rabbitmq-stream+tls", port or DEFAULT_STREAM_TLS_PORT, keep_vhost=True)
        query = urlsplit(amqp_uri).query
        return f"{derived}?{query}" if query else derived
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


def with_credentials_of(uri: str, amqp_uri: str) -> str:
    """`uri` as given; without a user of its own, with the broker URI's credentials (so a management or
    stream URI names only where, and the password is given once)."""
    parts = urlsplit(uri)
    if "@" in parts.netloc or "@" not in urlsplit(amqp_uri).netloc:
        return uri
    userinfo = urlsplit(amqp_uri).netloc.rsplit("@", 1)[0]
    return urlunsplit((parts.scheme, f"{userinfo}@{parts.netloc}", parts.path, parts.query, parts.fragment))


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
    tables = [
        _Table(s, f"source[{i}]", source) if isinstance(s, dict) else _not_table(i, source)
        for i, s in enumerate(raw_sources)
    ]
    sources = tuple(
        _with_lease(_source(t, broker), broker, archive) for t in tables if "src-queue-pattern" not in t.data
    )
    patterns = tuple(_pattern(t, broker, archive) for t in tables if "src-queue-pattern" in t.data)
    _refuse_duplicates(sources, source)
    return ArchiverConfig(broker, archive, sources, patterns)


def _with_lease(config: SourceConfig, broker: BrokerConfig, archive: ArchiveSettings) -> SourceConfig:
    """A queue's lease lives beside it; a stream's in its vhost on the broker's AMQP port."""
    if isinstance(config, QueueSourceConfig):
        return replace(config, lease=archive.leases)
    return replace(config, lease_uri=with_vhost(broker.uri, config.vhost) if archive.leases else None)


def _not_table(i: int, source: str) -> _Table:
    raise ConfigError("expected a [[source]] table", source=source, key=f"source[{i}]")


def _pattern(t: _Table, broker: BrokerConfig, archive: ArchiveSettings) -> PatternSourceConfig:
    if "src-queue" in t.data or "src-stream" in t.data:
        raise ConfigError("give one of src-queue, src-stream or src-queue-pattern", source=t.source, key=t.where)
    pattern = t.take("src-queue-pattern", str)
    try:
        re.compile(pattern)
    except re.error as err:
        raise t.fail("src-queue-pattern", f"not a regular expression: {err}") from None
    vhost = t.take("vhost", str, vhost_of(broker.uri))
    types = t.take("queue-types", list, ["classic", "quorum"], f"a list of {', '.join(QUEUE_TYPES)}")
    if not types or not all(q in QUEUE_TYPES for q in types):
        raise t.fail("queue-types", f"expected a non-empty list of {', '.join(QUEUE_TYPES)}, got {types!r}")
    uri = with_vhost(t.uri("src-uri", None) or broker.uri, vhost)
    reconnect = t.positive("reconnect-delay", DEFAULT_RECONNECT_DELAY)
    queue = QueueSourceConfig(
        queue="",
        uri=uri,
        management_uri=broker.management_uri,
        mode=t.choice("mode", MODES, "move"),
        ack_mode=t.choice("ack-mode", ACK_MODES, "on-confirm"),
        prefetch_count=t.positive("prefetch-count", DEFAULT_PREFETCH, integer=True),
        reconnect_delay=reconnect,
        delete_after="never",
        exclusive=t.take("exclusive", bool, True),
    )
    if queue.mode == "snapshot":
        raise t.fail("mode", "a pattern archives the queues it finds as they come; snapshot names its queues")
    stream_uri = with_vhost(broker.stream_uri, vhost) if broker.stream_uri else None
    stream = StreamSourceConfig(stream="", vhost=vhost, uri=stream_uri, offset=_offset(t), reconnect_delay=reconnect)
    t.done()
    leased_queue, leased_stream = _with_lease(queue, broker, archive), _with_lease(stream, broker, archive)
    assert isinstance(leased_queue, QueueSourceConfig) and isinstance(leased_stream, StreamSourceConfig)
    return PatternSourceConfig(pattern, vhost, tuple(types), leased_queue, leased_stream)


def _broker(t: _Table) -> BrokerConfig:
    uri = t.uri("uri")
    if not uri.startswith(("amqp://", "amqps://")):
        raise t.fail("uri", "expected an amqp:// or amqps:// URI")
    management = t.uri("management-uri", None)
    management = (
        with_credentials_of(management, uri) if management else derived_uri(uri, "http", 15672, keep_vhost=False)
    )
    stream = t.uri("stream-uri", None)
    stream = with_credentials_of(stream, uri) if stream else None
    t.done()
    return BrokerConfig(uri, management, stream)


def _retention(t: _Table) -> int | None:
    text = t.take("retention", str, None, 'an age such as "90d"')
    if text is None:
        return None
    try:
        ns = parse_duration(text, what="retention")
    except ConfigError as err:
        raise t.fail("retention", 'expected an age such as "90d", "12h" or "2w"') from err
    if ns < MIN_RETENTION_NS:
        raise t.fail("retention", "expected at least 2h: younger hours may still be written")
    return ns


def _archive(t: _Table) -> ArchiveSettings:
    sinks = t.take("sinks", list, list(ArchiveSettings.sinks), "a list of sink URIs")
    if not sinks or not all(isinstance(s, str) and s for s in sinks):
        raise t.fail("sinks", "expected a non-empty list of sink URIs")
    settings = ArchiveSettings(
        sinks=tuple(expand_env(s, lambda msg: t.fail("sinks", msg)) for s in sinks),
        segment_max_bytes=t.positive("segment-max-bytes", ArchiveSettings.segment_max_bytes, integer=True),
        segment_max_age=t.positive("segment-max-age", ArchiveSettings.segment_max_age),
        segment_idle=t.positive("segment-idle", ArchiveSettings.segment_idle, allow_zero=True),
        definitions_interval=t.positive("definitions-interval", ArchiveSettings.definitions_interval, allow_zero=True),
        keep_password_hashes=t.take("keep-password-hashes", bool, ArchiveSettings.keep_password_hashes),
        write_quorum=_write_quorum(t, len(sinks)),
        compact=t.take("compact", bool, ArchiveSettings.compact),
        compact_max_bytes=t.positive("compact-max-bytes", ArchiveSettings.compact_max_bytes, integer=True),
        retention_ns=_retention(t),
        metrics_listen=_metrics_listen(t),
        discovery_interval=t.positive("discovery-interval", ArchiveSettings.discovery_interval),
        leases=t.take("leases", bool, ArchiveSettings.leases),
    )
    t.done()
    return settings


def _metrics_listen(t: _Table) -> str | None:
    value = t.take("metrics-listen", str, "", 'HOST:PORT, e.g. "127.0.0.1:9419"')
    if not value:
        return None
    try:
        parse_listen(value)
    except ConfigError as err:
        raise t.fail("metrics-listen", str(err).removeprefix(f"metrics-listen {value!r}: ")) from None
    return value


def _write_quorum(t: _Table, sinks: int) -> int | None:
    value = t.take("write-quorum", (str, int), "all", '"all" or a number of sinks')
    if value == "all":
        return None
    if isinstance(value, str) or not 1 <= value <= sinks:
        raise t.fail("write-quorum", f'expected "all" or a number from 1 to {sinks} (the sinks listed), got {value!r}')
    return value


def _source(t: _Table, broker: BrokerConfig) -> SourceConfig:
    if ("src-queue" in t.data) == ("src-stream" in t.data):
        raise ConfigError(
            "give exactly one of src-queue, src-stream or src-queue-pattern", source=t.source, key=t.where
        )
    reconnect = t.positive("reconnect-delay", DEFAULT_RECONNECT_DELAY)
    if "src-stream" in t.data:
        stream = _name(t, "src-stream")
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
            queue=_name(t, "src-queue"),
            uri=t.uri("src-uri", None) or broker.uri,
            management_uri=broker.management_uri,
            mode=t.choice("mode", MODES, "move"),
            ack_mode=t.choice("ack-mode", ACK_MODES, "on-confirm"),
            prefetch_count=t.positive("prefetch-count", DEFAULT_PREFETCH, integer=True),
            reconnect_delay=reconnect,
            delete_after=_delete_after(t),
            exclusive=t.take("exclusive", bool, True),
        )
    t.done()
    return config


MAX_NAME_BYTES = 255  # RabbitMQ's limit for queue, stream, exchange and vhost names: a short string


def _name(t: _Table, key: str) -> str:
    """A queue or stream name: any UTF-8 RabbitMQ allows (the broker judges the rest), up to 255 bytes."""
    name = t.take(key, str)
    size = len(name.encode())
    if not name or size > MAX_NAME_BYTES:
        raise t.fail(key, f"a name is 1 to {MAX_NAME_BYTES} bytes of UTF-8, this one is {size}")
    return name


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
    named: dict[str, StreamOffset] = {
        "first": StreamOffset("first"),
        "last": StreamOffset("last"),
        "next": StreamOffset("next"),
    }
    if value in named:
        return named[value]
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
