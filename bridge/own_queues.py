"""The queues warren declares on a source broker for its own use, and their names.

`warren.tap.<queue>` receives a copy of everything routed to a tapped queue; `warren.ack.<queue>` holds
one small message, the acknowledgement witness (bridge/archiver/witness.py); `warren.lease.<kind>.<name>`
is a source's lease (bridge/archiver/lease.py). Any queue name RabbitMQ allows (up to
255 bytes of UTF-8) can be a source, so a derived name that would not fit keeps a readable head of the
source's name and ends in a hash of the whole of it: distinct sources never share a derived name.
"""

from __future__ import annotations

import hashlib

MAX_NAME_BYTES = 255  # what RabbitMQ allows a queue name (a short string)
TAP_PREFIX = "warren.tap."
ACK_PREFIX = "warren.ack."
LEASE_PREFIX = "warren.lease."  # bridge/archiver/lease.py
MEMBERS_PREFIX = "warren.members."  # ... and the archivers sharing a configuration
OWN_PREFIXES = (TAP_PREFIX, ACK_PREFIX, LEASE_PREFIX, MEMBERS_PREFIX)
_HASH_HEX = 16


def owned_queue_name(prefix: str, source_queue: str) -> str:
    """`prefix` + the source queue's name, shortened with a hash when the whole would exceed 255 bytes."""
    whole = prefix + source_queue
    if len(whole.encode()) <= MAX_NAME_BYTES:
        return whole
    digest = hashlib.blake2b(source_queue.encode(), digest_size=_HASH_HEX // 2).hexdigest()
    room = MAX_NAME_BYTES - len(prefix.encode()) - len(digest) - 1
    head = source_queue.encode()[:room].decode("utf-8", "ignore")  # never cut a character in two
    return f"{prefix}{head}~{digest}"


def is_own_queue(name: str) -> bool:
    return name.startswith(OWN_PREFIXES)
