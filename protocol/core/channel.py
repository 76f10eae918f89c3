"""Per-channel protocol state: content reassembly, broker-initiated methods, confirm bookkeeping.

Pure: frames in, events out. Replies the protocol requires without asking anyone (close-ok,
flow-ok, cancel-ok) are appended to the connection's outbound buffer passed in.
"""

from __future__ import annotations

import struct

from pamqp import base, commands

from protocol.core import frames
from protocol.core.events import (
    ChannelClosedByPeer,
    ChannelFlow,
    Confirm,
    ConsumerCancelledByBroker,
    Event,
    GetEmpty,
    GetOk,
    MethodReceived,
    Returned,
)
from protocol.core.message import Message
from protocol.errors import FrameError

# what the content that follows a method belongs to
_DELIVER, _RETURN, _GET = 1, 2, 3


class ChannelState:
    """One channel: which content frame comes next, and what it completes."""

    __slots__ = (
        "_body_parts",
        "_body_size",
        "_got",
        "_kind",
        "_message",
        "_message_count",
        "_reply_code",
        "_reply_text",
        "closing",
        "confirming",
        "number",
        "publish_seq",
    )

    def __init__(self, number: int) -> None:
        self.number = number
        self.closing = False
        self.confirming = False
        self.publish_seq = 0
        self._message: Message | None = None  # content being assembled
        self._kind = 0
        self._reply_code = 0  # basic.return's, for the content that follows
        self._reply_text = ""
        self._message_count = 0  # basic.get-ok's
        self._body_size = -1  # -1: expecting a content header; otherwise: body bytes expected
        self._body_parts: list[bytes] = []
        self._got = 0

    def receive_frame(self, ftype: int, payload: bytes, out: bytearray) -> Event | None:
        if ftype == frames.FRAME_METHOD:
            if self._message is not None:
                raise FrameError(
                    "method frame arrived while content was still expected", reply_code=505, channel=self.number
                )
            if len(payload) < 4:
                raise FrameError(f"method frame of {len(payload)} bytes is truncated", channel=self.number)
            method_id = (payload[0] << 24) | (payload[1] << 16) | (payload[2] << 8) | payload[3]
            if method_id == frames.DELIVER_ID:
                # Even on a closing channel the content that follows must be read (and then dropped).
                try:
                    consumer_tag, delivery_tag, redelivered, exchange, routing_key = frames.decode_deliver(payload)
                except (IndexError, ValueError, struct.error) as err:
                    raise FrameError(f"cannot decode Basic.Deliver: {err}", channel=self.number) from err
                self._message = Message(
                    b"",
                    exchange=exchange,
                    routing_key=routing_key,
                    delivery_tag=delivery_tag,
                    redelivered=redelivered,
                    consumer_tag=consumer_tag,
                    channel=self.number,
                )
                self._kind = _DELIVER
                return None
            if method_id == frames.ACK_ID or method_id == frames.NACK_ID:
                if len(payload) < 13:
                    raise FrameError("truncated Basic.Ack/Nack", channel=self.number)
                tag, multiple = frames.decode_confirm(payload)
                return Confirm(self.number, tag, multiple, method_id == frames.ACK_ID)
            return self._method(frames.decode_method(payload, self.number), out)
        if ftype == frames.FRAME_HEADER:
            return self._header(payload)
        if ftype == frames.FRAME_BODY:
            return self._body(payload)
        if ftype == frames.FRAME_HEARTBEAT:
            raise FrameError("heartbeat frame on a channel other than 0", channel=self.number)
        raise FrameError(f"unknown frame type {ftype}", channel=self.number)

    def take_delivery(
        self, buf: bytes, start: int, end: int, end_of_data: int, max_payload: int
    ) -> tuple[Message, int] | None:
        """A whole delivery in one step, the consumer's hot path: the basic.deliver method frame whose
        payload is buf[start:end], then its content header and a single body frame, all complete in
        `buf`. Returns the message and where the next frame starts; None for anything else (content split
        over frames or reads, another frame between, a closing channel, any fault), which the
        frame-by-frame path then handles or reports."""
        if self._message is not None or self.closing:
            return None
        number = self.number
        # Frame heads are read inline, not through a helper: this runs once per message.
        header_start = end + 1 + frames.FRAME_HEADER_SIZE
        if end_of_data < header_start:
            return None
        ftype, channel, size = frames.unpack_frame_head(buf, end + 1)
        header_end = header_start + size
        if ftype != frames.FRAME_HEADER or channel != number or not 14 <= size <= max_payload:
            return None
        if header_end >= end_of_data or buf[header_end] != frames.FRAME_END:
            return None
        class_id, body_size, raw_properties = frames.content_header_fields(buf, header_start, header_end)
        if class_id != 60 or body_size > max_payload:
            return None  # a body over frame_max comes in several frames: frame by frame
        next_at = header_end + 1
        body = b""
        if body_size:
            body_start = next_at + frames.FRAME_HEADER_SIZE
            if end_of_data < body_start:
                return None
            ftype, channel, size = frames.unpack_frame_head(buf, next_at)
            body_end = body_start + size
            if ftype != frames.FRAME_BODY or channel != number or size != body_size:
                return None
            if body_end >= end_of_data or buf[body_end] != frames.FRAME_END:
                return None
            body = buf[body_start:body_end]
            next_at = body_end + 1
        try:
            consumer_tag, delivery_tag, redelivered, exchange, routing_key = frames.decode_deliver(buf[start:end])
        except (IndexError, ValueError, struct.error):
            return None
        message = Message(
            body,
            raw_properties,
            exchange=exchange,
            routing_key=routing_key,
            delivery_tag=delivery_tag,
            redelivered=redelivered,
            consumer_tag=consumer_tag,
            channel=number,
        )
        return message, next_at

    def _header(self, payload: bytes) -> Event | None:
        message = self._message
        if message is None or self._body_size != -1:
            raise FrameError(
                "content header without a method that carries content", reply_code=505, channel=self.number
            )
        try:
            class_id, body_size, raw_properties = frames.content_header_fields(payload)
        except ValueError as err:
            raise FrameError(str(err), channel=self.number) from err
        if class_id != 60:
            raise FrameError(f"content header for class {class_id}, expected 60 (basic)", channel=self.number)
        message.raw_properties = raw_properties
        if body_size == 0:
            return self._complete(b"")
        self._body_size = body_size
        return None

    def _body(self, payload: bytes) -> Event | None:
        if self._message is None or self._body_size < 0:
            raise FrameError("content body without a content header", reply_code=505, channel=self.number)
        got = self._got + len(payload)
        if got > self._body_size:
            raise FrameError(
                f"content body of at least {got} bytes exceeds the {self._body_size} bytes the header announced",
                channel=self.number,
            )
        if got == self._body_size:
            if self._body_parts:
                self._body_parts.append(payload)
                body = b"".join(self._body_parts)
                self._body_parts = []
            else:
                body = payload
            return self._complete(body)
        self._body_parts.append(payload)
        self._got = got
        return None

    def _complete(self, body: bytes) -> Event | None:
        message = self._message
        assert message is not None
        message.body = body
        self._message = None
        self._body_size = -1
        self._got = 0
        kind = self._kind
        if self.closing:
            return None
        if kind == _DELIVER:
            return message
        if kind == _RETURN:
            return Returned(self.number, message, self._reply_code, self._reply_text)
        return GetOk(self.number, message, self._message_count)

    def _method(self, method: base.Frame, out: bytearray) -> Event | None:
        # pamqp types unset fields as None; a decoded method has every field set, hence the `or`s.
        match method:
            case commands.Channel.Close():
                out += frames.encode_method(self.number, commands.Channel.CloseOk())
                self.closing = True
                return ChannelClosedByPeer(
                    self.number, method.reply_code or 0, method.reply_text, method.class_id or 0, method.method_id or 0
                )
            case commands.Channel.CloseOk():
                return MethodReceived(self.number, method)
            case commands.Basic.Return():
                self._start_content(_RETURN, method.exchange, method.routing_key or "", 0, False)
                self._reply_code, self._reply_text = method.reply_code or 0, method.reply_text
                return None
            case commands.Basic.GetOk():
                routing_key, tag = method.routing_key or "", method.delivery_tag or 0
                self._start_content(_GET, method.exchange, routing_key, tag, method.redelivered)
                self._message_count = method.message_count or 0
                return None
        if self.closing:
            # The spec: after sending close, discard all but close and close-ok. Content methods
            # above are still read in full, so their header and body frames are not taken for errors.
            return None
        match method:
            case commands.Basic.GetEmpty():
                return GetEmpty(self.number)
            case commands.Basic.Cancel():
                consumer_tag = method.consumer_tag or ""
                if not method.nowait:
                    out += frames.encode_method(self.number, commands.Basic.CancelOk(consumer_tag))
                return ConsumerCancelledByBroker(self.number, consumer_tag)
            case commands.Channel.Flow():
                active = bool(method.active)
                out += frames.encode_method(self.number, commands.Channel.FlowOk(active))
                return ChannelFlow(self.number, active)
            case commands.Confirm.SelectOk():
                self.confirming = True
        return MethodReceived(self.number, method)

    def _start_content(self, kind: int, exchange: str, routing_key: str, tag: int, redelivered: bool) -> None:
        self._message = Message(
            b"",
            exchange=exchange,
            routing_key=routing_key,
            delivery_tag=tag,
            redelivered=redelivered,
            channel=self.number,
        )
        self._kind = kind


class ConfirmTracker:
    """Which published sequence numbers the broker has confirmed, in O(1) per confirm.

    Tags below `low` are all settled; out-of-order single confirms above it wait in `_above`.
    """

    __slots__ = ("_above", "low", "nacked", "published")

    def __init__(self) -> None:
        self.published = 0
        self.low = 0
        self._above: set[int] = set()
        self.nacked: list[int] = []

    @property
    def outstanding(self) -> int:
        return self.published - self.low - len(self._above)

    def settle(self, tag: int, multiple: bool, ack: bool) -> None:
        if multiple:
            if not ack:
                self.nacked.extend(t for t in range(self.low + 1, tag + 1) if t not in self._above)
            if tag > self.low:
                self.low = tag
                if self._above:
                    above = {t for t in self._above if t > tag}
                    while self.low + 1 in above:  # single confirms above it may now join the run
                        self.low += 1
                        above.discard(self.low)
                    self._above = above
        else:
            if not ack:
                self.nacked.append(tag)
            if tag == self.low + 1:
                self.low = tag
                above = self._above
                while self.low + 1 in above:
                    self.low += 1
                    above.discard(self.low)
            elif tag > self.low:
                self._above.add(tag)
