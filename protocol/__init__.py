"""Talking to RabbitMQ: AMQP 0-9-1 as a sans-IO core (`protocol.core`) under a thin asyncio transport
(`protocol.aio`), the stream protocol (`protocol.stream`), the management API (`protocol.management`).

What most callers need is here: `connect()` for a `Connection`, its `Channel`s, and `Message`. They are
imported when first asked for, so that a command that needs none of them (`warren ls`, `protocol.errors`
for its error types) does not pay for the transport's imports at every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.lazy import importer

if TYPE_CHECKING:
    from protocol.aio.channel import Channel, QueueInfo
    from protocol.aio.connection import Connection, connect
    from protocol.core.message import Message, Properties
    from protocol.uri import ConnectionParameters, parse_uri

__all__ = [
    "Channel",
    "Connection",
    "ConnectionParameters",
    "Message",
    "Properties",
    "QueueInfo",
    "connect",
    "parse_uri",
]

__getattr__ = importer(
    __name__,
    {
        "Channel": "protocol.aio.channel",
        "QueueInfo": "protocol.aio.channel",
        "Connection": "protocol.aio.connection",
        "connect": "protocol.aio.connection",
        "Message": "protocol.core.message",
        "Properties": "protocol.core.message",
        "ConnectionParameters": "protocol.uri",
        "parse_uri": "protocol.uri",
    },
)
