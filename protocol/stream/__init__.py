"""RabbitMQ's stream protocol: consuming and publishing on rstream with our own errors (client.py), each
stored message's filter value read from its AMQP 1.0 bytes (filter_values.py), and rstream's strings
sized in bytes (rstream_strings.py). Nothing outside this package imports rstream.

Its names are imported when first asked for: reading an archive needs filter_values, not rstream.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    from protocol.stream.filter_values import (
        ANNOTATION,
        FILTER_VALUE_KEY,
        PROPERTY_FIELDS,
        FilterValueSource,
        stream_filter_value,
    )

_CLIENT = (
    "Chunk",
    "FilteredMessage",
    "OnChunk",
    "StartAt",
    "StreamEndpoint",
    "StreamPublisher",
    "StreamSubscription",
    "filter_value_of",
)
_FILTER_VALUES = ("ANNOTATION", "FILTER_VALUE_KEY", "PROPERTY_FIELDS", "FilterValueSource", "stream_filter_value")
_HOMES = {
    **dict.fromkeys(_CLIENT, "protocol.stream.client"),
    **dict.fromkeys(_FILTER_VALUES, "protocol.stream.filter_values"),
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
