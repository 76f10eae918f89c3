"""The sans-IO AMQP 0-9-1 connection: bytes in, events out, intents in, bytes out.

No sockets, no awaits, no clock of its own (one is injected), so every path, including broken input
and heartbeat timeouts, is tested by feeding it bytes. `protocol.aio.connection` wraps it in an asyncio
transport.
"""

from __future__ import annotations

import enum
import platform
import time
from collections.abc import Callable
from typing import Any

from pamqp import base, commands, encode

from protocol.core import frames
from protocol.core.channel import ChannelState
from protocol.core.events import (
    Blocked,
    ChannelClosedByPeer,
    ConnectionClosedByPeer,
    ConnectionCloseFinished,
    ConnectionOpened,
    Event,
    MethodReceived,
    Unblocked,
)
from protocol.errors import (
    AuthenticationError,
    ChannelClosed,
    ConnectionLost,
    FrameError,
    HeartbeatTimeout,
    ProtocolError,
)

# Missing this many heartbeat intervals' worth of input means the peer is gone. RabbitMQ sends a
# heartbeat every half interval when idle, so 1.5 intervals of silence is three missed beats, and
# detection (with ticks every quarter interval) lands within two intervals of the peer dying.
HEARTBEAT_SILENCE_FACTOR = 1.5

CLIENT_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}


class State(enum.Enum):
    IDLE = "idle"
    AWAIT_START = "awaiting connection.start"
    AWAIT_TUNE = "awaiting connection.tune"
    AWAIT_OPEN_OK = "awaiting connection.open-ok"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


def negotiate(client: int | None, server: int, *, zero_means_unlimited: bool = True) -> int:
    """Tune negotiation: the lower non-zero value wins; 0 means 'no limit' from either side."""
    if client is None:
        return server
    if zero_means_unlimited:
        if client == 0:
            return server
        if server == 0:
            return client
    return min(client, server)


class ConnectionState:
    """One AMQP connection's protocol state: handshake, tuning, heartbeats, channels, content."""

    def __init__(
        self,
        *,
        username: str,
        password: str,
        vhost: str = "/",
        heartbeat: int | None = None,
        frame_max: int = 131072,
        channel_max: int = 2047,
        mechanism: str = "PLAIN",
        connection_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mechanism not in ("PLAIN", "AMQPLAIN"):
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}: use PLAIN or AMQPLAIN")
        frames.encode_shortstr(vhost, field="virtual_host", method="Connection.Open")  # refused now, not mid-handshake
        self._username = username
        self._password = password
        self.vhost = vhost
        self._mechanism = mechanism
        self._connection_name = connection_name
        self._want_heartbeat = heartbeat
        self._want_frame_max = frame_max
        self._want_channel_max = channel_max
        self._clock = clock
        self.state = State.IDLE
        self.frame_max = max(frame_max, frames.MIN_FRAME_MAX)
        self.channel_max = channel_max
        self.heartbeat = 0
        self.server_properties: dict[str, Any] = {}
        self.channels: dict[int, ChannelState] = {}
        self._out = bytearray()
        self._in = b""  # the start of a frame not yet complete
        self._last_received = clock()
        self._last_sent = clock()

    # ---- outbound -------------------------------------------------------------------------

    def initiate(self) -> None:
        """Start the handshake: the protocol header goes out first."""
        if self.state is not State.IDLE:
            raise ProtocolError(f"initiate() in state {self.state.value}")
        self._out += frames.PROTOCOL_HEADER
        self.state = State.AWAIT_START

    def data_to_send(self) -> bytes:
        """Everything queued for the socket since the last call, as one write."""
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        self._last_sent = self._clock()
        return data

    @property
    def pending_output(self) -> int:
        return len(self._out)

    def open_channel(self) -> int:
        """Allocate the lowest free channel number and queue channel.open for it."""
        self._require_open()
        for number in range(1, self.channel_max + 1):
            if number not in self.channels:
                break
        else:
            raise ProtocolError(f"all {self.channel_max} channels are in use")
        self.channels[number] = ChannelState(number)
        self._out += frames.encode_method(number, commands.Channel.Open())
        return number

    def close_channel(self, number: int, reply_code: int = 200, reply_text: str = "") -> None:
        """Queue channel.close; frames other than close/close-ok on it are discarded until close-ok."""
        chan = self._channel(number)
        if chan.closing:
            return
        chan.closing = True
        self._out += frames.encode_method(
            number, commands.Channel.Close(reply_code, frames.truncate_shortstr(reply_text), 0, 0)
        )

    def send_method(self, number: int, method: base.Frame) -> None:
        self._require_open()
        if number and self._channel(number).closing:
            raise ChannelClosed(f"channel {number} is closing")
        self._out += frames.encode_method(number, method)

    def publish(
        self,
        number: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        raw_properties: bytes,
        *,
        mandatory: bool = False,
    ) -> int:
        """Queue basic.publish with its content; returns the confirm sequence number (0 without confirms)."""
        chan = self.channels.get(number)
        if chan is None or chan.closing or self.state is not State.OPEN:
            raise ChannelClosed(f"cannot publish on channel {number}: not open")
        frames.encode_content(
            self._out,
            number,
            frames.publish_args(exchange, routing_key, mandatory),
            raw_properties,
            body,
            self.frame_max,
        )
        if chan.confirming:
            chan.publish_seq += 1
            return chan.publish_seq
        return 0

    def ack(self, number: int, delivery_tag: int, *, multiple: bool = False) -> None:
        self._out += frames.encode_ack(number, delivery_tag, multiple)

    def close(self, reply_code: int = 200, reply_text: str = "", class_id: int = 0, method_id: int = 0) -> None:
        """Start an orderly close; ConnectionCloseFinished follows when the broker agrees."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        if self.state is State.IDLE:
            self.state = State.CLOSED
            return
        self._out += frames.encode_method(
            0, commands.Connection.Close(reply_code, frames.truncate_shortstr(reply_text), class_id, method_id)
        )
        self.state = State.CLOSING

    # ---- inbound --------------------------------------------------------------------------

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Parse every complete frame in `data` (plus what was left over before) into events.

        Raises FrameError on malformed input, after queueing a connection.close that tells the broker
        why; the connection is then closed and unusable.
        """
        if self.state is State.CLOSED:
            return []
        self._last_received = self._clock()
        # One bytes object per read: frames are then sliced out of it with a single copy each.
        buf = self._in + bytes(data) if self._in else bytes(data)
        events: list[Event] = []
        pos = 0
        end_of_data = len(buf)
        if self.state is State.AWAIT_START and buf[:4] == b"AMQP":
            self._fail(FrameError(f"broker refused AMQP 0-9-1 and offered protocol header {bytes(buf[:8])!r}"))
        max_payload = self.frame_max - frames.FRAME_OVERHEAD
        channels = self.channels
        try:
            while end_of_data - pos >= frames.FRAME_HEADER_SIZE:
                ftype, number, size = frames.unpack_frame_head(buf, pos)
                if size > max_payload:
                    raise FrameError(
                        f"frame of {size} bytes exceeds the negotiated frame_max {self.frame_max}",
                        channel=number,
                    )
                end = pos + frames.FRAME_HEADER_SIZE + size
                if end >= end_of_data:
                    break
                if buf[end] != frames.FRAME_END:
                    raise FrameError(
                        f"frame-end octet is {buf[end]:#04x}, expected 0xce (frame type {ftype}, {size} bytes)",
                        channel=number,
                    )
                if ftype == frames.FRAME_METHOD and number and buf.startswith(frames.DELIVER_HEAD, pos + 7):
                    chan = channels.get(number)
                    taken = (
                        None
                        if chan is None
                        else chan.take_delivery(buf, pos + frames.FRAME_HEADER_SIZE, end, end_of_data, max_payload)
                    )
                    if taken is not None:
                        events.append(taken[0])
                        pos = taken[1]
                        continue
                payload = buf[pos + frames.FRAME_HEADER_SIZE : end]
                pos = end + 1
                if number == 0:
                    self._connection_frame(ftype, payload, events)
                    continue
                chan = channels.get(number)
                if chan is None:
                    raise FrameError(f"frame for channel {number}, which is not open", reply_code=504)
                event = chan.receive_frame(ftype, payload, self._out)
                if event is not None:
                    events.append(event)
                    if type(event) is ChannelClosedByPeer or (
                        type(event) is MethodReceived and type(event.method) is commands.Channel.CloseOk
                    ):
                        del channels[number]
        except FrameError as err:
            self._fail(err)
        self._in = buf[pos:] if pos < end_of_data else b""
        return events

    def receive_eof(self) -> None:
        """The socket closed. Raises unless the connection had closed in good order."""
        if self.state is State.CLOSED:
            return
        state = self.state
        self.state = State.CLOSED
        if self._in:
            raise FrameError(f"connection closed in the middle of a frame ({len(self._in)} bytes buffered)")
        if state in (State.AWAIT_START, State.AWAIT_TUNE, State.AWAIT_OPEN_OK):
            raise ConnectionLost(f"broker closed the socket during the handshake ({state.value})")
        raise ConnectionLost("broker closed the socket")

    def tick(self) -> None:
        """Heartbeat duty, to be called every quarter interval or so: send ours, check theirs.

        Raises HeartbeatTimeout when the broker has been silent too long.
        """
        if not self.heartbeat or self.state not in (State.OPEN, State.CLOSING):
            return
        now = self._clock()
        silent = now - self._last_received
        if silent > self.heartbeat * HEARTBEAT_SILENCE_FACTOR:
            self.state = State.CLOSED
            raise HeartbeatTimeout(silent, self.heartbeat)
        if now - self._last_sent >= self.heartbeat / 2 and not self._out:
            self._out += frames.HEARTBEAT_FRAME

    # ---- internals ------------------------------------------------------------------------

    def _fail(self, err: FrameError) -> None:
        if self.state not in (State.CLOSED, State.CLOSING, State.IDLE, State.AWAIT_START):
            self._out += frames.encode_method(
                0, commands.Connection.Close(err.reply_code, frames.truncate_shortstr(err.what), 0, 0)
            )
        self.state = State.CLOSED
        self._in = b""
        raise err

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise ChannelClosed(f"connection is {self.state.value}, not open")

    def _channel(self, number: int) -> ChannelState:
        chan = self.channels.get(number)
        if chan is None:
            raise ChannelClosed(f"channel {number} is not open")
        return chan

    def _connection_frame(self, ftype: int, payload: bytes, events: list[Event]) -> None:
        if ftype == frames.FRAME_HEARTBEAT:
            return
        if ftype != frames.FRAME_METHOD:
            raise FrameError(f"frame type {ftype} on channel 0, where only methods and heartbeats go", reply_code=505)
        method = frames.decode_method(payload, 0)
        handler = self._CONNECTION_METHODS.get(type(method))
        if handler is None:
            raise FrameError(f"unexpected {method.name} on channel 0", reply_code=505)
        event = handler(self, method)
        if event is not None:
            events.append(event)

    def _on_start(self, method: commands.Connection.Start) -> None:
        self._expect(State.AWAIT_START, method)
        self.server_properties = dict(method.server_properties or {})
        offered = (method.mechanisms or "").split()
        if self._mechanism not in offered:
            self.state = State.CLOSED
            raise AuthenticationError(403, f"broker offers SASL mechanisms {offered}, not {self._mechanism}", 10, 10)
        if self._mechanism == "PLAIN":
            response = f"\0{self._username}\0{self._password}".encode()
        else:
            # AMQPLAIN: a field table without its length prefix
            response = encode.field_table({"LOGIN": self._username, "PASSWORD": self._password})[4:]
        client_properties: dict[str, Any] = {
            "product": "warren",
            "platform": f"Python {platform.python_version()}",
            "information": "continuous archival and point-in-time replay for RabbitMQ",
            "capabilities": dict(CLIENT_CAPABILITIES),
        }
        if self._connection_name:
            client_properties["connection_name"] = self._connection_name
        self._out += frames.encode_start_ok(client_properties, self._mechanism, response, "en_US")
        self.state = State.AWAIT_TUNE

    def _on_tune(self, method: commands.Connection.Tune) -> None:
        self._expect(State.AWAIT_TUNE, method)
        self.channel_max = negotiate(self._want_channel_max, method.channel_max) or 65535
        self.frame_max = max(negotiate(self._want_frame_max, method.frame_max), frames.MIN_FRAME_MAX)
        self.heartbeat = negotiate(self._want_heartbeat, method.heartbeat, zero_means_unlimited=False)
        self._out += frames.encode_method(
            0, commands.Connection.TuneOk(self.channel_max, self.frame_max, self.heartbeat)
        )
        self._out += frames.encode_method(0, frames.method(commands.Connection.Open, virtual_host=self.vhost))
        self.state = State.AWAIT_OPEN_OK

    def _on_open_ok(self, method: commands.Connection.OpenOk) -> ConnectionOpened:
        self._expect(State.AWAIT_OPEN_OK, method)
        self.state = State.OPEN
        return ConnectionOpened(self.server_properties, self.frame_max, self.channel_max, self.heartbeat)

    def _on_close(self, method: commands.Connection.Close) -> ConnectionClosedByPeer:
        self._out += frames.encode_method(0, commands.Connection.CloseOk())
        self.state = State.CLOSED
        for chan in self.channels.values():
            chan.closing = True
        return ConnectionClosedByPeer(
            method.reply_code or 0, method.reply_text, method.class_id or 0, method.method_id or 0
        )

    def _on_close_ok(self, method: commands.Connection.CloseOk) -> ConnectionCloseFinished:
        self._expect(State.CLOSING, method)
        self.state = State.CLOSED
        return ConnectionCloseFinished()

    def _on_blocked(self, method: commands.Connection.Blocked) -> Blocked:
        return Blocked(method.reason or "")

    def _on_unblocked(self, method: commands.Connection.Unblocked) -> Unblocked:
        return Unblocked()

    def _on_update_secret_ok(self, method: commands.Connection.UpdateSecretOk) -> MethodReceived:
        return MethodReceived(0, method)

    def _expect(self, state: State, method: base.Frame) -> None:
        if self.state is not state:
            raise FrameError(f"unexpected {method.name} while {self.state.value}", reply_code=505)

    _CONNECTION_METHODS: dict[type, Callable[[ConnectionState, Any], Event | None]] = {
        commands.Connection.Start: _on_start,
        commands.Connection.Tune: _on_tune,
        commands.Connection.OpenOk: _on_open_ok,
        commands.Connection.Close: _on_close,
        commands.Connection.CloseOk: _on_close_ok,
        commands.Connection.Blocked: _on_blocked,
        commands.Connection.Unblocked: _on_unblocked,
        commands.Connection.UpdateSecretOk: _on_update_secret_ok,
    }
