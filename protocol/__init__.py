"""Talking to RabbitMQ: AMQP 0-9-1 frames and state machines (sans-IO core, thin asyncio transport)."""

from protocol.client import Connection, connect
from protocol.client_channel import Channel, QueueInfo
from protocol.message import Message, Properties
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
