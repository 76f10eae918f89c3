"""Talking to RabbitMQ: AMQP 0-9-1 as a sans-IO core (`protocol.core`) under a thin asyncio transport
(`protocol.aio`), the stream protocol (`protocol.stream`), the management API (`protocol.management`).

What most callers need is here: `connect()` for a `Connection`, its `Channel`s, and `Message`.
"""

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
