"""Events the sans-IO core hands back from the bytes it was fed.

A delivery is not wrapped: the core hands back the `Message` itself (its `channel` and `consumer_tag`
say where it goes), so the hot path allocates nothing but the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pamqp import commands

from protocol.message import Message


@dataclass(frozen=True, slots=True)
class ConnectionOpened:
    """Handshake finished: the values both sides agreed on."""

    server_properties: dict[str, Any]
    frame_max: int
    channel_max: int
    heartbeat: int


@dataclass(frozen=True, slots=True)
class MethodReceived:
    """A method that answers one of ours (declare-ok, consume-ok, close-ok...), for the caller to match."""

    channel: int
    method: commands.Frame


@dataclass(frozen=True, slots=True)
class Confirm:
    """A publisher confirm: the broker took (ack) or refused (nack) responsibility for messages."""

    channel: int
    delivery_tag: int
    multiple: bool
    ack: bool


@dataclass(frozen=True, slots=True)
class Returned:
    """basic.return: a mandatory message that could not be routed."""

    channel: int
    message: Message
    reply_code: int
    reply_text: str


@dataclass(frozen=True, slots=True)
class GetOk:
    """basic.get-ok with its content."""

    channel: int
    message: Message
    message_count: int


@dataclass(frozen=True, slots=True)
class GetEmpty:
    channel: int


@dataclass(frozen=True, slots=True)
class ConsumerCancelledByBroker:
    """basic.cancel from the broker: the consumer is gone (queue deleted, node down, ...)."""

    channel: int
    consumer_tag: str


@dataclass(frozen=True, slots=True)
class ChannelClosedByPeer:
    """channel.close from the broker; the core has already answered close-ok."""

    channel: int
    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


@dataclass(frozen=True, slots=True)
class ChannelFlow:
    """channel.flow: the broker asks us to stop (active=False) or resume publishing on a channel."""

    channel: int
    active: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosedByPeer:
    """connection.close from the broker; the core has already answered close-ok."""

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


@dataclass(frozen=True, slots=True)
class ConnectionCloseFinished:
    """connection.close-ok: the close we started is complete."""


@dataclass(frozen=True, slots=True)
class Blocked:
    """connection.blocked: the broker is low on a resource and will not read from publishers."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unblocked:
    pass


Event = (
    Message
    | ConnectionOpened
    | MethodReceived
    | Confirm
    | Returned
    | GetOk
    | GetEmpty
    | ConsumerCancelledByBroker
    | ChannelClosedByPeer
    | ChannelFlow
    | ConnectionClosedByPeer
    | ConnectionCloseFinished
    | Blocked
    | Unblocked
)
