"""RabbitMQ's stream protocol: consuming and publishing on rstream with our own errors (client.py), each
stored message's filter value read from its AMQP 1.0 bytes (filter_values.py), and rstream's strings
sized in bytes (rstream_strings.py). Nothing outside this package imports rstream.

The client's names are imported when first asked for: reading an archive needs filter_values, not rstream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.lazy import importer
from protocol.stream.filter_values import (
    ANNOTATION,
    FILTER_VALUE_KEY,
    PROPERTY_FIELDS,
    FilterValueSource,
    stream_filter_value,
)

if TYPE_CHECKING:
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

# What is not imported above comes from the client, on first use.
__getattr__ = importer(__name__, {name: "protocol.stream.client" for name in __all__ if name not in globals()})
