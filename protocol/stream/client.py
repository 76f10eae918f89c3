"""Consuming and publishing over RabbitMQ's stream protocol (rabbitmq-stream:// URIs), on rstream.

The only place that touches rstream (with `rstream_strings`): what the archiver and the replayer need is
offered here in our own terms, a subscription from an offset with a plain callback and a producer that
sends batches with publishing ids and filter values and reports each confirm, and every exception
rstream raises comes out as one of ours (`StreamAuthenticationError`, `StreamNotFound`,
`StreamConnectionLost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

from rstream import Consumer, ConsumerOffsetSpecification, OffsetType, Producer
from rstream.exceptions import AuthenticationFailure, StreamDoesNotExist
from rstream.producer import ConfirmationStatus
from rstream.utils import OnClosedErrorInfo, RawMessage

from protocol.errors import (
    InvalidURI,
    StreamAuthenticationError,
    StreamConnectionLost,
    StreamNotFound,
)
from protocol.management import parse_version
from protocol.stream.rstream_strings import size_strings_in_bytes
from protocol.uri import TLSOptions, tls_options

size_strings_in_bytes()  # before any connection: rstream sizes strings in characters, not bytes

DEFAULT_PORT = 5552
DEFAULT_TLS_PORT = 5551
TLS_SCHEME = "rabbitmq-stream+tls"
STREAM_SCHEMES = ("rabbitmq-stream", TLS_SCHEME)
FILTERING_SINCE = (3, 13)  # stream filtering: publish v2 with filter values, Bloom filters per chunk
CLOSE_TIMEOUT = 10.0
FIRST_OFFSET_WAIT = 5.0  # seconds for a stream's first chunk to arrive before it counts as empty
# rstream's response code for a publish whose connection went before its confirm came
_CONNECTION_LOST_CODE = -1

OffsetKind = Literal["first", "last", "next", "offset", "timestamp"]
_OFFSET_TYPES = {
    "first": OffsetType.FIRST,
    "last": OffsetType.LAST,
    "next": OffsetType.NEXT,
    "offset": OffsetType.OFFSET,
    "timestamp": OffsetType.TIMESTAMP,
}


@dataclass(frozen=True)
class StartAt:
    """Where a subscription starts: the first, last or next message, an `offset`, or a `timestamp` (ms)."""

    kind: OffsetKind = "first"
    value: int | None = None

    @classmethod
    def after(cls, offset: int) -> StartAt:
        return cls("offset", offset + 1)


# A delivered chunk's messages, each as (offset, the bytes the stream stores: AMQP 1.0 encoded), and the
# chunk's timestamp (when the broker stored it, ms since the epoch). What the callback returns, if
# anything, is awaited before the next chunk is read (and so holds back the broker's credit).
Chunk = list[tuple[int, bytes]]
OnChunk = Callable[[Chunk, int], Awaitable[None] | None]


@dataclass(frozen=True)
class StreamEndpoint:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    vhost: str
    tls: TLSOptions | None = None  # rabbitmq-stream+tls://, with the amqps:// query options

    @classmethod
    def parse(cls, uri: str) -> StreamEndpoint:
        parts = urlsplit(uri)
        if parts.scheme not in STREAM_SCHEMES or not parts.hostname:
            raise InvalidURI(
                "a stream URI is rabbitmq-stream://user:pass@host:5552/vhost (or rabbitmq-stream+tls://...:5551), "
                f"not {parts.scheme}://..."
            )
        with_tls = parts.scheme == TLS_SCHEME
        try:
            port = parts.port or (DEFAULT_TLS_PORT if with_tls else DEFAULT_PORT)
        except ValueError:
            raise InvalidURI("stream URI: bad port (percent-encode '/', '?', '#', '@' in the password)") from None
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        shown = f"{parts.scheme}://{parts.hostname}:{port}"
        tls = tls_options(parse_qs(parts.query), parts.hostname, shown, enabled=with_tls, scheme=TLS_SCHEME)
        username, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        return cls(parts.hostname, port, username, password, vhost, tls)

    def with_vhost(self, vhost: str) -> StreamEndpoint:
        return replace(self, vhost=vhost)

    def redacted(self) -> str:
        scheme = TLS_SCHEME if self.tls else "rabbitmq-stream"
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{quote(self.vhost, safe='')}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context() if self.tls else None

    async def subscribe(
        self,
        stream: str,
        on_chunk: OnChunk,
        *,
        start: StartAt,
        subscriber_name: str,
        connection_name: str,
        initial_credit: int = 10,
        on_close: Callable[[str], None] | None = None,
    ) -> StreamSubscription:
        """Consume `stream` from `start`, on a connection of its own, a chunk at a time; `on_close` is
        called with rstream's reason when that connection closes or the stream's metadata changes
        (deleted, leader moved)."""

        def closed(info: OnClosedErrorInfo) -> None:
            if on_close is not None:
                on_close(str(info.reason))

        consumer = _ChunkConsumer(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            ssl_context=self._ssl_context(),
            vhost=self.vhost,
            connection_name=connection_name,
            on_close_handler=closed,
        )
        subscription = StreamSubscription(self, consumer, stream, subscriber_name)
        try:
            with _rstream_errors(self, stream):
                await consumer.subscribe(
                    stream,
                    cast(Any, on_chunk),  # called by _ChunkConsumer, with a chunk, not rstream's (message, context)
                    decoder=None,  # keep the AMQP 1.0 bytes as the broker stores them
                    offset_specification=ConsumerOffsetSpecification(_OFFSET_TYPES[start.kind], start.value),
                    subscriber_name=subscriber_name,
                    initial_credit=initial_credit,
                )
        except BaseException:
            await subscription.close()
            raise
        return subscription

    async def first_offset(self, stream: str, *, connection_name: str, wait: float = FIRST_OFFSET_WAIT) -> int | None:
        """The offset of the oldest message `stream` still holds (what its retention has not removed), read
        off the first chunk a subscription from "first" gets; None if none comes within `wait` seconds
        (an empty stream)."""
        found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def first_chunk(chunk: Chunk, _chunk_ts_ms: int) -> None:
            if chunk and not found.done():
                found.set_result(chunk[0][0])

        probe = await self.subscribe(
            stream,
            first_chunk,
            start=StartAt("first"),
            subscriber_name="warren-offset-probe",  # never stores an offset
            connection_name=connection_name,
            initial_credit=1,
        )
        try:
            return await asyncio.wait_for(found, wait)
        except TimeoutError:
            return None
        finally:
            await probe.close()

    async def publisher(self, connection_name: str) -> StreamPublisher:
        """A started publisher that sends filter values if the broker has stream filtering (RabbitMQ 3.13+
        with its feature flag on), else a plain one, as before filtering existed (`filtering` says which)."""
        producer = self._producer(connection_name)
        with _rstream_errors(self, None):
            try:
                await producer.start()
                # Asked first, from the connection's peer properties: RabbitMQ before 3.13 closes the
                # connection on the command-versions exchange rstream would use to find out ("unknown frame").
                properties = (await producer.default_client).server_properties or {}
                version = parse_version(properties.get("version"))
                if version is None or version < FILTERING_SINCE:
                    return StreamPublisher(self, producer, filtering=False)
                await producer.close()
                producer = self._producer(connection_name, filter_values=True)
                try:
                    await producer.start()
                except ValueError:  # rstream's "Filtering is not supported by the broker": the feature flag is off
                    await producer.close()
                    producer = self._producer(connection_name)
                    await producer.start()
                    return StreamPublisher(self, producer, filtering=False)
                return StreamPublisher(self, producer, filtering=True)
            except BaseException:
                with contextlib.suppress(Exception):  # rstream's failures closing what never opened add nothing
                    await producer.close()
                raise

    def _producer(self, connection_name: str, *, filter_values: bool = False) -> Producer:
        """With `filter_values`, the producer publishes each `FilteredMessage`'s value (publish v2, 3.13+)."""
        return Producer(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            vhost=self.vhost,
            ssl_context=self._ssl_context(),
            connection_name=connection_name,
            filter_value_extractor=filter_value_of if filter_values else None,
        )


class _ChunkConsumer(Consumer):
    """rstream's consumer, handing over each delivered chunk whole instead of a call per message.

    Archiving does one pass per chunk (one capture time, one room check, records packed in a loop)
    where rstream would make a context object and a call for every message. This replaces rstream's
    `_on_deliver` (rstream 1.x): the credit and the offset filtering (`_filter_messages`, which also
    moves the subscriber's offset on for a resubscription) are its own.
    """

    async def _on_deliver(self, frame: Any, subscriber: Any, filter_value: Any) -> None:
        if frame.subscription_id != subscriber.subscription_id:
            return
        await subscriber.client.credit(subscriber.subscription_id, 1)
        chunk = list(self._filter_messages(frame, subscriber, filter_value))
        if chunk:
            pending = subscriber.callback(chunk, frame.timestamp)
            if pending is not None:
                await pending


class StreamSubscription:
    """One stream consumed by one subscriber name, on its own connection. Made by `StreamEndpoint.subscribe`."""

    def __init__(self, endpoint: StreamEndpoint, consumer: Consumer, stream: str, subscriber_name: str) -> None:
        self._endpoint = endpoint
        self._consumer = consumer
        self.stream = stream
        self.subscriber_name = subscriber_name

    async def store_offset(self, offset: int) -> None:
        """Store `offset` on the broker under the subscriber name (what `rabbitmq-streams` tools show)."""
        with _rstream_errors(self._endpoint, self.stream):
            await self._consumer.store_offset(self.stream, self.subscriber_name, offset)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Unsubscribe and close the connection, giving up after `timeout`; never raises: the broker drops
        a subscription whose connection is gone on its own."""
        with contextlib.suppress(Exception):  # whatever rstream hits closing a dead connection
            await asyncio.wait_for(self._consumer.close(), timeout)


# Called with each publishing id the broker confirmed, or with one it refused and why.
OnConfirmed = Callable[[int], object]
OnRefused = Callable[[int, str], None]


class StreamPublisher:
    """A producer connection to one broker. Made by `StreamEndpoint.publisher`."""

    def __init__(self, endpoint: StreamEndpoint, producer: Producer, *, filtering: bool) -> None:
        self._endpoint = endpoint
        self._producer = producer
        self.filtering = filtering  # whether filter values go with the messages (the broker has stream filtering)

    async def send_batch(
        self,
        stream: str,
        messages: Sequence[tuple[int, bytes, str | None]],
        *,
        publisher_name: str,
        on_confirmed: OnConfirmed,
        on_refused: OnRefused,
    ) -> None:
        """Send (publishing id, stored bytes, filter value) messages as `publisher_name`, by which the broker
        deduplicates: a publishing id at or below the last it confirmed for that name is dropped. Filter
        values are left out unless `filtering`. Each confirm (or refusal) is reported as it arrives."""
        if self.filtering:
            batch: list[RawMessage] = [
                FilteredMessage(data, publishing_id=pid, filter_value=v) for pid, data, v in messages
            ]
        else:
            batch = [RawMessage(data, publishing_id=pid) for pid, data, _ in messages]

        def confirmed(status: ConfirmationStatus) -> None:
            if status.is_confirmed:
                on_confirmed(status.message_id)
            elif status.response_code == _CONNECTION_LOST_CODE:
                on_refused(status.message_id, "the connection closed before the broker confirmed it")
            else:
                on_refused(status.message_id, f"code {status.response_code}")

        with _rstream_errors(self._endpoint, stream):
            await self._producer.send_batch(stream, batch, publisher_name=publisher_name, on_publish_confirm=confirmed)

    async def close(self) -> None:
        with _rstream_errors(self._endpoint, None):
            await self._producer.close()


@contextlib.contextmanager
def _rstream_errors(endpoint: StreamEndpoint, stream: str | None) -> Iterator[None]:
    """rstream's exceptions as ours, at every call into it.

    Beyond its own `ServerError`s (one per response code) and `ClientError`s, rstream (up to 1.1) lets
    whatever its internals meet on a dead connection escape: `ConnectionClosed`, `OSError`, `TimeoutError`,
    an `AssertionError` from a closed writer, a `KeyError` from a dropped waiter. No common type covers
    them, so anything but a refusal raised from inside rstream is a lost connection.
    """
    try:
        yield
    except AuthenticationFailure as err:
        raise StreamAuthenticationError(endpoint.redacted()) from err
    except StreamDoesNotExist as err:
        raise StreamNotFound(stream or "?", endpoint.redacted()) from err
    except Exception as err:  # the boundary: see the docstring
        raise StreamConnectionLost(f"{type(err).__name__}: {err}", endpoint.redacted()) from err


# ---- filter values on the wire -------------------------------------------------------------------------


class _Utf8Sized(str):
    """A filter value whose len() is its UTF-8 size: rstream 1.1 writes len(value) as the byte count of
    a publish v2 frame's filter value, which is wrong for anything but ASCII (`encode_publish` writes it
    inline, so the correction of `size_strings_in_bytes` does not reach it)."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self.encode("utf-8"))


_UNFILTERED = _Utf8Sized("")  # RabbitMQ keeps an empty filter value as none: the message is unfiltered


@dataclass
class FilteredMessage(RawMessage):
    """Stored message bytes with the filter value the broker's Bloom filter is to get for them."""

    filter_value: str | None = None

    def __post_init__(self) -> None:
        self.filter_value = _Utf8Sized(self.filter_value) if self.filter_value else _UNFILTERED


async def filter_value_of(message: RawMessage) -> str:
    """The filtering producer's extractor: rstream asks it for every message it publishes."""
    # rstream cannot encode "no value" in a publish v2 frame (it writes nothing); "" means the same.
    return getattr(message, "filter_value", None) or _UNFILTERED
