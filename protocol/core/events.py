"""Events the sans-IO core hands back from the bytes it was fed: a small vocabulary, one base class.

A delivery is not wrapped: the core hands back the `Message` itself (an `Event` too; its `channel` and
`consumer_tag` say where it goes), so the hot path allocates nothing but the message. The others are
frozen dataclasses; a transport dispatches on them with `match` and class patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pamqp import base

if TYPE_CHECKING:
    from protocol.core.message import Message


class Event:
    """Whatever the core hands back: a `Message` (a delivery) or one of the dataclasses below.

    A plain class without slots of its own, so that a subclass costs nothing to build or to set
    attributes on (a frozen dataclass base would route every assignment in `Message` through its
    `__setattr__`).
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ConnectionOpened(Event):
    """Handshake finished: the values both sides agreed on."""

    server_properties: dict[str, Any]
    frame_max: int
    channel_max: int
    heartbeat: int


@dataclass(frozen=True, slots=True)
class MethodReceived(Event):
    """A method that answers one of ours (declare-ok, consume-ok, close-ok...), for the caller to match."""

    channel: int
    method: base.Frame


@dataclass(frozen=True, slots=True)
class Confirm(Event):
    """A publisher confirm: the broker took (ack) or refused (nack) responsibility for messages."""

    channel: int
    delivery_tag: int
    multiple: bool
    ack: bool


@dataclass(frozen=True, slots=True)
class Returned(Event):
    """basic.return: a mandatory message that could not be routed."""

    channel: int
    message: Message
    reply_code: int
    reply_text: str


@dataclass(frozen=True, slots=True)
class GetOk(Event):
    """basic.get-ok with its content."""

    channel: int
    message: Message
    message_count: int


@dataclass(frozen=True, slots=True)
class GetEmpty(Event):
    """basic.get-empty: the queue had nothing to give."""

    channel: int


@dataclass(frozen=True, slots=True)
class ConsumerCancelledByBroker(Event):
    """basic.cancel from the broker: the consumer is gone (queue deleted, node down, ...)."""

    channel: int
    consumer_tag: str


@dataclass(frozen=True, slots=True)
class ChannelClosedByPeer(Event):
    """channel.close from the broker; the core has already answered close-ok."""

    channel: int
    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


@dataclass(frozen=True, slots=True)
class ChannelFlow(Event):
    """channel.flow: the broker asks us to stop (active=False) or resume publishing on a channel."""

    channel: int
    active: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosedByPeer(Event):
    """connection.close from the broker; the core has already answered close-ok."""

    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


@dataclass(frozen=True, slots=True)
class ConnectionCloseFinished(Event):
    """connection.close-ok: the close we started is complete."""


@dataclass(frozen=True, slots=True)
class Blocked(Event):
    """connection.blocked: the broker is low on a resource and will not read from publishers."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unblocked(Event):
    """connection.unblocked: publishing may resume."""
