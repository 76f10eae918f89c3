"""A scripted broker for the sans-IO core: it feeds server frames to a ConnectionState and reads back
what the client queued, so a test reads like the conversation on the wire.

Everything here is built on pamqp (the same codec RabbitMQ clients use) and never opens a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pamqp import body, commands, decode
from pamqp import frame as pframe

from protocol.core import frames
from protocol.core.connection import ConnectionState
from protocol.core.events import Event

_frame_head = struct.Struct(">BHI")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class RawFrame:
    """One frame exactly as the client wrote it."""

    ftype: int
    channel: int
    payload: bytes


def raw_frame(ftype: int, channel: int, payload: bytes, frame_end: bytes = frames.FRAME_END_BYTE) -> bytes:
    """Bytes of an arbitrary frame, valid or not."""
    return _frame_head.pack(ftype, channel, len(payload)) + payload + frame_end


def split_raw(data: bytes) -> list[RawFrame]:
    """Cut the client's output into frames (the protocol header, if present, is skipped)."""
    if data.startswith(frames.PROTOCOL_HEADER):
        data = data[len(frames.PROTOCOL_HEADER) :]
    out = []
    pos = 0
    while pos < len(data):
        ftype, channel, size = _frame_head.unpack_from(data, pos)
        end = pos + 7 + size
        assert data[end] == frames.FRAME_END, f"client wrote a bad frame-end octet at {end}"
        out.append(RawFrame(ftype, channel, bytes(data[pos + 7 : end])))
        pos = end + 1
    return out


def parse(data: bytes) -> list[tuple[int, Any]]:
    """The client's output as (channel, pamqp frame object) pairs, in order."""
    out = []
    pos = 0
    while pos < len(data):
        consumed, channel, value = pframe.unmarshal(data[pos:])
        out.append((channel, value))
        pos += consumed
    return out


def content_header(body_size: int, raw_properties: bytes, channel: int, class_id: int = 60) -> bytes:
    """A content header frame carrying `raw_properties` byte for byte."""
    return raw_frame(frames.FRAME_HEADER, channel, struct.pack(">HHQ", class_id, 0, body_size) + raw_properties)


def decode_amqplain(response: bytes) -> dict[str, Any]:
    """AMQPLAIN's SASL response is a field table without its length prefix."""
    return decode.field_table(struct.pack(">I", len(response)) + response)[1]


def as_bytes(value: str | bytes) -> bytes:
    """pamqp decodes a longstr to str when it happens to be valid UTF-8."""
    return value.encode() if isinstance(value, str) else bytes(value)


class Broker:
    """The broker's side of one connection.

    `say(...)` feeds frames (pamqp objects with their channel, or raw bytes) and returns the events;
    `heard()` returns what the client queued since the last call, parsed.
    """

    def __init__(self, conn: ConnectionState | None = None, clock: FakeClock | None = None, **options: Any) -> None:
        self.clock = clock or FakeClock()
        self.conn = conn or ConnectionState(username="guest", password="s3cret", clock=self.clock, **options)

    # ---- talking --------------------------------------------------------------------------

    @staticmethod
    def encode(item: Any, channel: int = 0) -> bytes:
        if isinstance(item, bytes | bytearray):
            return bytes(item)
        return pframe.marshal(item, channel)

    def say(self, *items: Any, channel: int = 0) -> list[Event]:
        """Feed pamqp frames (all on `channel`) or raw bytes, in one read."""
        return self.conn.receive_bytes(b"".join(self.encode(item, channel) for item in items))

    def say_bytes(self, data: bytes) -> list[Event]:
        return self.conn.receive_bytes(data)

    def deliver_bytes(
        self,
        channel: int,
        body_parts: list[bytes],
        raw_properties: bytes = b"\x00\x00",
        *,
        consumer_tag: str = "ctag",
        delivery_tag: int = 1,
        exchange: str = "ex",
        routing_key: str = "rk",
        redelivered: bool = False,
    ) -> bytes:
        """basic.deliver, content header and one body frame per part (none for an empty body)."""
        size = sum(len(p) for p in body_parts)
        data = pframe.marshal(
            commands.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key), channel
        )
        data += content_header(size, raw_properties, channel)
        for part in body_parts:
            data += pframe.marshal(body.ContentBody(part), channel)
        return data

    # ---- listening ------------------------------------------------------------------------

    def heard_bytes(self) -> bytes:
        return self.conn.data_to_send()

    def heard(self) -> list[tuple[int, Any]]:
        data = self.conn.data_to_send()
        if data.startswith(frames.PROTOCOL_HEADER):
            data = data[len(frames.PROTOCOL_HEADER) :]
        return parse(data)

    def heard_one(self, kind: type, channel: int = 0) -> Any:
        """Exactly one method was queued, of this kind, on this channel: return it."""
        got = self.heard()
        assert len(got) == 1, f"expected one {kind.__name__}, client sent {got}"
        ch, method = got[0]
        assert isinstance(method, kind), f"expected {kind.__name__}, client sent {method!r}"
        assert ch == channel
        return method

    # ---- scripted phases ------------------------------------------------------------------

    def start(
        self, *, mechanisms: str = "PLAIN AMQPLAIN", server_properties: dict[str, Any] | None = None
    ) -> commands.Connection.StartOk:
        """Protocol header in, connection.start out, start-ok back."""
        self.conn.initiate()
        assert self.conn.data_to_send() == frames.PROTOCOL_HEADER
        props = server_properties if server_properties is not None else {"product": "RabbitMQ", "version": "3.13.7"}
        assert self.say(commands.Connection.Start(0, 9, props, mechanisms, "en_US")) == []
        return self.heard_one(commands.Connection.StartOk)

    def tune(
        self, *, channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60
    ) -> tuple[commands.Connection.TuneOk, commands.Connection.Open]:
        assert self.say(commands.Connection.Tune(channel_max, frame_max, heartbeat)) == []
        got = self.heard()
        assert [type(m) for _, m in got] == [commands.Connection.TuneOk, commands.Connection.Open], got
        assert all(ch == 0 for ch, _ in got)
        return got[0][1], got[1][1]

    def open_ok(self) -> list[Event]:
        return self.say(commands.Connection.OpenOk())

    def handshake(self, *, channel_max: int = 2047, frame_max: int = 131072, heartbeat: int = 60) -> Broker:
        self.start()
        self.tune(channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat)
        events = self.open_ok()
        assert len(events) == 1
        assert self.heard() == []
        return self

    def open_channel(self) -> int:
        number = self.conn.open_channel()
        self.heard_one(commands.Channel.Open, number)
        events = self.say(commands.Channel.OpenOk(), channel=number)
        assert len(events) == 1
        return number

    def enable_confirms(self, number: int) -> None:
        self.conn.send_method(number, commands.Confirm.Select())
        self.heard_one(commands.Confirm.Select, number)
        self.say(commands.Confirm.SelectOk(), channel=number)


def opened(**options: Any) -> Broker:
    """A broker that has completed the handshake with a fresh client."""
    tune = {k: options.pop(k) for k in ("server_channel_max", "server_frame_max", "server_heartbeat") if k in options}
    broker = Broker(**options)
    return broker.handshake(
        channel_max=tune.get("server_channel_max", 2047),
        frame_max=tune.get("server_frame_max", 131072),
        heartbeat=tune.get("server_heartbeat", 60),
    )
