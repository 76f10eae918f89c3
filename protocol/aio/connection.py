"""The asyncio side of an AMQP connection: a thin transport around the core's `ConnectionState`.

It moves bytes between the socket and the sans-IO core, turns events into futures and callbacks,
and batches writes: everything queued while handling one read (acks, publishes) goes out in one
socket write, and ack(multiple=True) calls are coalesced into one frame per write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, cast

from protocol.aio.channel import Channel
from protocol.core.connection import ConnectionState, State
from protocol.core.events import (
    Blocked,
    ChannelClosedByPeer,
    ChannelFlow,
    Confirm,
    ConnectionClosedByPeer,
    ConnectionCloseFinished,
    ConnectionOpened,
    ConsumerCancelledByBroker,
    Event,
    GetEmpty,
    GetOk,
    MethodReceived,
    Returned,
    Unblocked,
)
from protocol.core.message import Message
from protocol.errors import (
    AuthenticationError,
    CertificateRejected,
    ChannelClosed,
    ConnectionClosedByBroker,
    ConnectionLost,
    ProtocolError,
)
from protocol.uri import ConnectionParameters, parse_uri

log = logging.getLogger("warren.amqp")

# Flush the outbound buffer at once when it grows past this, rather than at the end of the loop turn.
WRITE_BATCH_BYTES = 256 * 1024


class Connection(asyncio.Protocol):
    """An open AMQP 0-9-1 connection. Create with `connect()`.

    Also each of its channels' `ChannelOwner`: `core`, `writable`, `blocked`, `schedule_flush`, `flush`,
    `ack_later` and `forget` are for them.
    """

    def __init__(self, params: ConnectionParameters, name: str | None = None) -> None:
        self.params = params
        self._loop = asyncio.get_running_loop()
        self._core = ConnectionState(
            username=params.username,
            password=params.password,
            vhost=params.vhost,
            heartbeat=params.heartbeat,
            frame_max=params.frame_max,
            channel_max=params.channel_max,
            mechanism=params.mechanism,
            connection_name=name,
            clock=self._loop.time,
        )
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[ConnectionOpened] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closed.add_done_callback(_consume_exception)
        self._opened.add_done_callback(_consume_exception)
        self._channels: dict[int, Channel] = {}
        self._pending_acks: set[Channel] = set()
        self._flush_scheduled = False
        self._in_receive = False
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._reading_paused_by: set[object] = set()
        self.blocked = False
        self.writable = True
        self.error: BaseException | None = None

    # ---- public API -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._core.state is State.OPEN and self.error is None

    @property
    def frame_max(self) -> int:
        return self._core.frame_max

    @property
    def heartbeat(self) -> int:
        return self._core.heartbeat

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._core.server_properties

    @property
    def core(self) -> ConnectionState:
        return self._core

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the connection ends: result None after our orderly close, else the error."""
        return self._closed

    async def channel(self) -> Channel:
        self._check_usable()
        number = self._core.open_channel()
        chan = Channel(self, number)
        self._channels[number] = chan
        self.schedule_flush()
        await chan._open()
        return chan

    async def close(self, timeout: float = 5.0) -> None:
        """Orderly close: connection.close, wait for close-ok (bounded), then drop the socket."""
        if self._closed.done():
            return
        if self._core.state is State.OPEN:
            self._write_pending_acks()  # acks must reach the broker before the close does
            self._core.close(200, "warren closing")
            self.flush()
            with contextlib.suppress(asyncio.TimeoutError, ProtocolError):
                await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        self._finish(None)

    def pause_reading(self, owner: object) -> None:
        """Stop reading from the socket until every owner that paused resumes (consumer backpressure)."""
        if not self._reading_paused_by and self._transport is not None:
            self._transport.pause_reading()
        self._reading_paused_by.add(owner)

    def resume_reading(self, owner: object) -> None:
        self._reading_paused_by.discard(owner)
        if not self._reading_paused_by and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # ---- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection hands a socket transport; uvloop's is one without subclassing asyncio.Transport
        self._transport = cast(asyncio.Transport, transport)
        self._core.initiate()
        self.flush()

    def data_received(self, data: bytes) -> None:
        self._in_receive = True
        try:
            events = self._core.receive_bytes(data)
        except ProtocolError as err:
            self._in_receive = False
            self.flush()  # the core queued a connection.close that says why
            self._finish(err)
            return
        channels = self._channels
        try:
            for event in events:
                # The hot path first, by the cheapest test there is (a class pattern costs twice as much):
                # a delivery goes straight to its channel's consumer.
                if type(event) is Message:
                    channels[event.channel]._deliver(event)
                else:
                    self._dispatch(event)
        finally:
            self._in_receive = False
        self.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._closed.done():
            return
        try:
            self._core.receive_eof()
        except ProtocolError as err:
            if exc is not None and isinstance(err, ConnectionLost):
                err = ConnectionLost(f"{exc}")
            self._finish(err)
            return
        self._finish(None)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        for chan in self._channels.values():
            chan._gate_changed()

    # ---- for its channels (ChannelOwner) --------------------------------------------------

    def schedule_flush(self) -> None:
        if self._in_receive or self._flush_scheduled:
            return
        if self._core.pending_output >= WRITE_BATCH_BYTES:
            self.flush()
            return
        self._flush_scheduled = True
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._pending_acks:
            self._write_pending_acks()
        data = self._core.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def ack_later(self, channel: Channel) -> None:
        self._pending_acks.add(channel)
        self.schedule_flush()

    def forget(self, number: int) -> None:
        self._channels.pop(number, None)

    # ---- internals ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.error is not None:
            raise self.error
        if self._core.state is not State.OPEN:
            raise ChannelClosed(f"connection is {self._core.state.value}")

    def _write_pending_acks(self) -> None:
        for chan in self._pending_acks:
            chan._write_pending_ack()
        self._pending_acks.clear()

    def _dispatch(self, event: Event) -> None:
        """Every event but a delivery (see `data_received`); confirms, the publisher's hot path, first."""
        match event:
            case Confirm():
                chan = self._channels.get(event.channel)
                if chan is not None:
                    chan._on_confirm(event)
            case MethodReceived() | GetOk() | GetEmpty():
                chan = self._channels.get(event.channel)
                if chan is not None:
                    chan._on_reply(event)
            case Returned():
                self._channels[event.channel]._on_returned(event)
            case ConsumerCancelledByBroker():
                self._channels[event.channel]._on_consumer_cancelled(event.consumer_tag)
            case ChannelFlow():
                self._channels[event.channel]._on_flow(event.active)
            case ChannelClosedByPeer():
                chan = self._channels.pop(event.channel, None)
                if chan is not None:
                    chan._on_closed_by_broker(event)
            case ConnectionOpened():
                self._on_opened(event)
            case Blocked():
                self.blocked = True
                log.warning("broker blocked publishing on this connection: %s", event.reason)
            case Unblocked():
                self.blocked = False
                log.info("broker unblocked publishing on this connection")
                for chan in self._channels.values():
                    chan._gate_changed()
            case ConnectionClosedByPeer():
                self._on_closed_by_broker(event)
            case ConnectionCloseFinished():
                self._finish(None)

    def _on_opened(self, event: ConnectionOpened) -> None:
        if event.heartbeat:
            self._schedule_tick()
        if not self._opened.done():
            self._opened.set_result(event)

    def _on_closed_by_broker(self, event: ConnectionClosedByPeer) -> None:
        cls = ConnectionClosedByBroker
        if not self._opened.done() and event.reply_code == 403:
            cls = AuthenticationError
        self.flush()  # close-ok
        self._finish(cls(event.reply_code, event.reply_text, event.class_id, event.method_id))

    def _schedule_tick(self) -> None:
        self._heartbeat_timer = self._loop.call_later(self._core.heartbeat / 4, self._tick)

    def _tick(self) -> None:
        try:
            self._core.tick()
        except ProtocolError as err:
            self._finish(err)
            return
        self.flush()
        self._schedule_tick()

    def _finish(self, error: BaseException | None) -> None:
        """The connection is over: fail or finish everything that waits on it, and drop the socket."""
        if self._closed.done():
            return
        if error is not None:
            self.error = error
            log.error("amqp connection to %s ended: %s", self.params.redacted(), error)
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
        if self._core.state is not State.CLOSED:
            self._core.state = State.CLOSED
        channel_error = error or ChannelClosed("connection closed")
        for chan in list(self._channels.values()):
            chan._on_connection_ended(channel_error)
        self._channels.clear()
        if not self._opened.done():
            self._opened.set_exception(error or ConnectionLost("closed during the handshake"))
        if error is None:
            self._closed.set_result(None)
        else:
            self._closed.set_exception(error)
        if self._transport is not None:
            self._transport.close() if error is None else self._transport.abort()


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    # Whoever needs the error reads it from `error` or awaits `closed`; don't warn when nobody did.
    if not fut.cancelled():
        fut.exception()


async def connect(
    uri: str | ConnectionParameters,
    *,
    name: str | None = None,
) -> Connection:
    """Open a connection: TCP (or TLS), handshake, tune, open the vhost. Raises typed errors."""
    params = parse_uri(uri) if isinstance(uri, str) else uri
    loop = asyncio.get_running_loop()
    ssl_ctx = params.tls.context() if params.tls else None
    server_hostname = params.tls.server_name if params.tls else None

    async def handshake() -> Connection:
        try:
            _, conn = await loop.create_connection(
                lambda: Connection(params, name),
                params.host,
                params.port,
                ssl=ssl_ctx,
                server_hostname=server_hostname,
            )
        except ssl.SSLCertVerificationError as err:
            raise CertificateRejected(
                f"{params.redacted()}: the broker's TLS certificate does not verify ({err.verify_message}); "
                "check cacertfile and the host name"
            ) from None
        except OSError as err:
            raise ConnectionLost(f"cannot connect to {params.redacted()}: {err.strerror or err}") from err
        try:
            await asyncio.shield(conn._opened)
        except BaseException:
            conn._finish(conn.error or ConnectionLost("handshake abandoned"))
            raise
        return conn

    try:
        return await asyncio.wait_for(handshake(), params.connection_timeout)
    except TimeoutError:
        raise ConnectionLost(
            f"no AMQP handshake with {params.redacted()} within {params.connection_timeout:.0f}s"
        ) from None
