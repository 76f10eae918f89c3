"""RabbitMQ's stream protocol: consuming and publishing on rstream with our own errors (client.py), each
stored message's filter value read from its AMQP 1.0 bytes (filter_values.py), and rstream's strings
sized in bytes (rstream_strings.py). Nothing outside this package imports rstream.
"""

from protocol.stream.client import (
    Chunk,
    FilteredMessage,
    OnChunk,
    StartAt,
    StreamEndpoint,
    StreamPublisher,
    StreamSubscription,
    filter_value_of,
)
from protocol.stream.filter_values import (
    ANNOTATION,
    FILTER_VALUE_KEY,
    PROPERTY_FIELDS,
    FilterValueSource,
    stream_filter_value,
)

__all__ = [
    "ANNOTATION",
    "FILTER_VALUE_KEY",
    "PROPERTY_FIELDS",
    "Chunk",
    "FilterValueSource",
    "FilteredMessage",
    "OnChunk",
    "StartAt",
    "StreamEndpoint",
    "StreamPublisher",
    "StreamSubscription",
    "filter_value_of",
    "stream_filter_value",
]
