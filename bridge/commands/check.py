"""`warren check --config FILE`: can this configuration run? Validates it, then reaches everything it
names: the broker over AMQP, its management API, every source (a queue by a passive declare, a stream
by subscribing on the stream port), and every sink (a probe object written, read back and deleted).
Each is one line on stdout, "ok" or what is wrong, never a password. Exit code 0 when all are ok, 1
(EXIT_CHECK_FAILED) when any is not, 2 when the configuration itself is wrong.

It changes nothing the archiver would not: no message is consumed and no queue declared; the probe
object goes where the archiver writes its own (`_warren/`) and is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bridge.archiver.discovery import matching
from bridge.archiver.snapshot_guard import check_snapshot_safe
from bridge.config import (
    ArchiverConfig,
    PatternSourceConfig,
    QueueSourceConfig,
    SourceConfig,
    StreamSourceConfig,
    default_stream_uri,
    load_config,
    resolve_stream_uri,
    with_vhost,
)
from bridge.errors import EXIT_CHECK_FAILED, EXIT_OK, WarrenError
from bridge.logs import scrub
from protocol.aio.connection import Connection, connect
from protocol.errors import (
    AuthenticationError,
    BrokerError,
    CertificateRejected,
    ConnectionLost,
    ProtocolError,
    StreamAuthenticationError,
    StreamConnectionLost,
    StreamNotFound,
)
from protocol.loop import run
from protocol.management import ManagementClient, ManagementError, redact
from protocol.stream import Chunk, StartAt, StreamEndpoint
from protocol.uri import parse_uri
from sinks import SinkError, open_sink, redact_url

CHECK_TIMEOUT = 60.0  # seconds for any one check (the sinks' own deadlines and retries fit well within)
CONNECTION_NAME = "warren check"
# What a check can meet and report; anything else is a bug, which the CLI reports as one.
CHECK_ERRORS = (WarrenError, ProtocolError, SinkError, OSError, TimeoutError)

T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, and None (ok, with a detail) or what is wrong."""

    what: str
    problem: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def line(self) -> str:
        if self.problem is not None:
            return scrub(f"{self.what}: {self.problem}")
        return scrub(f"{self.what}: ok" + (f" ({self.detail})" if self.detail else ""))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", required=True, help="the archiver's TOML configuration")
    parser.epilog = "example:\n  warren check --config /etc/warren/orders.toml"


def from_args(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # a ConfigError is exit code 2, in one line, from the CLI
    print(f"config {args.config}: ok ({_describe(config)})", flush=True)
    findings = run(check_all(config))
    for finding in findings:
        print(finding.line())
    failed = sum(not f.ok for f in findings)
    print(f"{len(findings) - failed} of {len(findings)} ok" + (f", {failed} not" if failed else ""))
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _describe(config: ArchiverConfig) -> str:
    queues = sum(isinstance(s, QueueSourceConfig) for s in config.sources)
    streams = len(config.sources) - queues
    sinks = len(config.archive.sinks)
    quorum = "all" if config.archive.write_quorum is None else str(config.archive.write_quorum)
    count = len(config.patterns)
    patterns = f", {count} pattern{'' if count == 1 else 's'}" if count else ""
    return f"{queues} queue and {streams} stream sources{patterns}, {sinks} sinks, write quorum {quorum}"


async def check_all(config: ArchiverConfig) -> list[Finding]:
    """Every check, the independent ones at once; the findings in the order of the report."""
    broker = asyncio.create_task(_check_broker(config.broker.uri))
    management = asyncio.create_task(_check_management(config.broker.management_uri))
    sources = asyncio.create_task(_check_sources(config))
    patterns = [asyncio.create_task(_check_pattern(config, p)) for p in config.patterns]
    sinks = [asyncio.create_task(_check_sink(uri)) for uri in config.archive.sinks]
    return [
        await broker,
        await management,
        *(await sources),
        *[await pattern for pattern in patterns],
        *[await sink for sink in sinks],
    ]


async def _check_pattern(config: ArchiverConfig, pattern: PatternSourceConfig) -> Finding:
    """What a src-queue-pattern matches now, through the management API as the archiver will list it."""
    what = f"pattern {pattern.pattern!r} in vhost {pattern.vhost!r}"
    try:
        async with ManagementClient(config.broker.management_uri, timeout=CHECK_TIMEOUT) as management:
            listing = await management.queues(pattern.vhost)
    except CHECK_ERRORS as err:
        return Finding(what, problem(err))
    found = matching([pattern], pattern.vhost, listing if isinstance(listing, list) else [])
    names = sorted(name for _, _, name in found)
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return Finding(what, detail=f"{len(names)} match now" + (f": {shown}" if names else ""))


async def _check_broker(uri: str) -> Finding:
    what = f"broker {_amqp_redacted(uri)}"
    try:
        conn = await _bounded(connect(uri, name=CONNECTION_NAME))
    except CHECK_ERRORS as err:
        return Finding(what, problem(err))
    with contextlib.suppress(*CHECK_ERRORS):
        await conn.close()
    version = _text(conn.server_properties.get("version"))
    return Finding(what, detail=f"RabbitMQ {version}" if version else "")


async def _check_management(uri: str) -> Finding:
    what = f"management API {redact(uri)}"
    try:
        async with ManagementClient(uri, timeout=CHECK_TIMEOUT) as management:
            overview = await management.overview()
    except CHECK_ERRORS as err:
        return Finding(what, problem(err))
    return Finding(what, detail=f"RabbitMQ {overview.get('rabbitmq_version', '?')}")


async def _check_sources(config: ArchiverConfig) -> list[Finding]:
    """Each source in the order configured; queues share one connection per broker URI."""
    connections: dict[str, Connection | BaseException] = {}
    stream_default: str | None = None
    findings = []
    try:
        for source in config.sources:
            if isinstance(source, QueueSourceConfig):
                if source.uri not in connections:
                    connections[source.uri] = await _connect_or_error(source.uri)
                findings.append(await _check_queue(connections[source.uri], source))
            else:
                if source.uri is None and stream_default is None:
                    stream_default = await _stream_uri(config)
                findings.append(
                    await _check_stream(source.uri or with_vhost(stream_default or "", source.vhost), source)
                )
    finally:
        for conn in connections.values():
            if isinstance(conn, Connection):
                with contextlib.suppress(*CHECK_ERRORS):
                    await conn.close()
    return findings


async def _stream_uri(config: ArchiverConfig) -> str:
    """The stream endpoint the archiver would use: the port the management API reports (5552 if none)."""
    try:
        return await _bounded(resolve_stream_uri(config.broker.uri, config.broker.management_uri))
    except CHECK_ERRORS:
        return default_stream_uri(config.broker.uri)


async def _connect_or_error(uri: str) -> Connection | BaseException:
    try:
        return await _bounded(connect(uri, name=CONNECTION_NAME))
    except CHECK_ERRORS as err:
        return err


async def _check_queue(conn: Connection | BaseException, source: QueueSourceConfig) -> Finding:
    what = _source_name(source)
    if not isinstance(conn, Connection):
        return Finding(what, f"not checked: {_amqp_redacted(source.uri)}: {problem(conn)}")
    try:
        channel = await _bounded(conn.channel())
        info = await _bounded(channel.queue_declare(source.queue, passive=True))
        with contextlib.suppress(*CHECK_ERRORS):
            await channel.close()
        if source.mode == "snapshot":
            await _bounded(check_snapshot_safe(source))
    except CHECK_ERRORS as err:
        return Finding(what, problem(err))
    consumers = f", {info.consumer_count} consumers" if info.consumer_count else ""
    return Finding(what, detail=f"{source.mode}, {info.message_count} messages{consumers}")


async def _check_stream(uri: str, source: StreamSourceConfig) -> Finding:
    what = _source_name(source)
    try:
        endpoint = StreamEndpoint.parse(uri)
        what += f" at {endpoint.redacted()}"
        # Subscribed at the next message, with a credit of one: nothing is read, nothing stored.
        subscription = await _bounded(
            endpoint.subscribe(
                source.stream,
                _ignore_chunk,
                start=StartAt("next"),
                subscriber_name=CONNECTION_NAME,
                connection_name=CONNECTION_NAME,
                initial_credit=1,
            )
        )
        await _bounded(subscription.close())
    except CHECK_ERRORS as err:
        return Finding(what, problem(err))
    return Finding(what)


def _ignore_chunk(chunk: Chunk, timestamp_ms: int) -> None:
    return None


async def _check_sink(uri: str) -> Finding:
    what = f"sink {redact_url(uri)}"
    try:
        async with open_sink(uri) as sink:
            what = f"sink {sink.url}"
            await _bounded(sink.check())
    except CHECK_ERRORS as err:
        return Finding(what, problem(err))
    return Finding(what, detail="wrote, read back and deleted a probe object")


async def _bounded(step: Awaitable[T], timeout: float = CHECK_TIMEOUT) -> T:
    try:
        return await asyncio.wait_for(step, timeout)
    except TimeoutError:
        raise TimeoutError(f"no answer within {timeout:.0f}s") from None


def problem(error: BaseException) -> str:
    """What is wrong, in words an operator acts on; the line already names what was checked."""
    for kind, describe in _PROBLEMS:
        if isinstance(error, kind):
            return scrub(describe(error))
    return scrub(str(error) or type(error).__name__)


def _broker_refusal(error: BrokerError) -> str:
    if error.reply_code == 404:
        return f"not found ({error.reply_code} {error.reply_name} - {_reply_text(error)})"
    if error.reply_code == 403:
        return f"access refused ({_reply_text(error)})"
    return f"refused: {error.reply_code} {error.reply_name} - {_reply_text(error)}"


def _management_problem(error: ManagementError) -> str:
    if error.credentials_refused:
        return f"credentials refused ({error.status} {error.reason or ''})".replace(" )", ")")
    if error.status is None:  # "management API URL: cannot reach it: ...", the URL being on the line already
        return str(error).split(": ", 1)[-1]
    return f"{error.status} {error.reason or ''}".strip()


def _sink_problem(error: SinkError) -> str:
    return error.detail


_PROBLEMS: list[tuple[type[BaseException], Callable[..., str]]] = [
    (AuthenticationError, lambda e: f"credentials refused ({e.reply_code} {e.reply_name})"),
    (StreamAuthenticationError, lambda e: "credentials refused"),
    (CertificateRejected, lambda e: str(e).split(": ", 1)[-1]),
    (StreamNotFound, lambda e: "not found (no such stream)"),
    (StreamConnectionLost, lambda e: f"unreachable: {e.detail}"),
    (BrokerError, _broker_refusal),
    (ConnectionLost, lambda e: f"unreachable: {e.detail}"),
    (ManagementError, _management_problem),
    (SinkError, _sink_problem),
    (OSError, lambda e: e.strerror or str(e)),
]


def _reply_text(error: BrokerError) -> str:
    # The broker repeats its reply name at the start of the text: "NOT_FOUND - no queue 'x' in vhost '/'".
    return error.reply_text.removeprefix(f"{error.reply_name} - ")


def _source_name(source: SourceConfig) -> str:
    if isinstance(source, QueueSourceConfig):
        return f"queue {source.queue!r} in vhost {source.vhost!r}"
    return f"stream {source.stream!r} in vhost {source.vhost!r}"


def _amqp_redacted(uri: str) -> str:
    try:
        return parse_uri(uri).redacted()
    except ProtocolError:
        return redact(uri)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")
