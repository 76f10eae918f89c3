"""One archived message: what it takes to republish it byte-identical, plus a few fields to filter on.

A record is a msgpack map with short keys (docs/FORMAT.md, "Records"). AMQP 0-9-1 records keep the
property section of the content header exactly as it came off the wire, so every property and header
keeps its AMQP type by construction; stream records keep the message as the broker stores it (its
AMQP 1.0 encoded bytes) with the broker's chunk timestamp.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

from protocol.core.header_table import comparable_properties
from protocol.core.message import Message, Properties, decode_properties
from protocol.errors import FrameError


class RecordKind(enum.IntEnum):
    AMQP091 = 0  # a message consumed from a queue over AMQP 0-9-1
    STREAM = 1  # a message read from a stream: AMQP 1.0 encoded bytes as the broker stores them


class SourceKind(enum.StrEnum):
    QUEUE = "queue"
    STREAM = "stream"


@dataclass(frozen=True, order=True)
class Source:
    """Where records come from: one queue or stream in one vhost."""

    vhost: str
    kind: SourceKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} in vhost {self.vhost!r}"

    def to_map(self) -> dict[str, str]:
        return {"vhost": self.vhost, "kind": str(self.kind), "name": self.name}

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Source:
        return cls(vhost=m["vhost"], kind=SourceKind(m["kind"]), name=m["name"])


@dataclass(slots=True)
class Record:
    """A decoded record. `time_ns` is what point-in-time selection compares: the broker's chunk
    timestamp for stream records, the capture time for queue records."""

    seq: int
    captured_ns: int
    kind: RecordKind
    body: bytes
    exchange: str = ""
    routing_key: str = ""
    raw_properties: bytes = b""
    redelivered: bool = False
    offset: int | None = None
    chunk_ts_ms: int | None = None
    fingerprint: bytes | None = None
    copy_of: int | None = None  # proven a copy of this earlier record by the archiver: replay skips it
    possible_copy_of: int | None = None  # redelivered with the content of this earlier record, unproven: kept
    snapshot: int | None = None  # the snapshot run (its start, ns) this record was read in
    _properties: Properties | None = field(default=None, repr=False, compare=False)

    @property
    def time_ns(self) -> int:
        if self.chunk_ts_ms is not None:
            return self.chunk_ts_ms * 1_000_000
        return self.captured_ns

    @property
    def properties(self) -> Properties:
        if self._properties is None:
            self._properties = decode_properties(self.raw_properties)
        return self._properties


# msgpack keys, fixed by docs/FORMAT.md
K_KIND, K_SEQ, K_CAPTURED, K_BODY = "k", "s", "c", "b"
K_EXCHANGE, K_ROUTING_KEY, K_PROPS, K_REDELIVERED = "e", "r", "p", "d"
K_MESSAGE_ID, K_TIMESTAMP = "m", "t"
K_OFFSET, K_CHUNK_TS, K_FINGERPRINT = "o", "u", "f"
K_COPY_OF, K_POSSIBLE_COPY_OF, K_SNAPSHOT = "x", "y", "n"


def fingerprint(exchange: str, routing_key: str, raw_properties: bytes, body: bytes) -> bytes:
    """Identifies a message's content (where it went, properties, body) to recognise a redelivered copy.

    The header table is taken in name order and without the broker's own delivery count
    (`comparable_properties`): a quorum queue adds `x-delivery-count` to every redelivery and may
    re-encode the table in name order, so a copy would otherwise never look like its original.
    """
    try:
        comparable = comparable_properties(raw_properties)
    except FrameError:
        comparable = raw_properties  # archived as it came; compared as it came
    h = hashlib.blake2b(digest_size=16)
    for part in (exchange.encode(), routing_key.encode(), comparable):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(body)
    return h.digest()


def message_fingerprint(message: Message) -> bytes:
    return fingerprint(message.exchange, message.routing_key, message.raw_properties, message.body)


def record_fingerprint(record: Record) -> bytes:
    return fingerprint(record.exchange, record.routing_key, record.raw_properties, record.body)


@dataclass(frozen=True, slots=True)
class CopyMark:
    """What the archiver knows of a redelivered message: a proven copy, or possibly one, of `seq`."""

    seq: int
    proven: bool


def amqp_record_map(
    seq: int,
    captured_ns: int,
    message: Message,
    *,
    fingerprint: bytes | None = None,
    mark: CopyMark | None = None,
    snapshot: int | None = None,
) -> dict[str, Any]:
    """The record map of a message consumed over AMQP 0-9-1; filter fields are decoded only if cheap."""
    raw = message.raw_properties
    m: dict[str, Any] = {
        K_KIND: RecordKind.AMQP091,
        K_SEQ: seq,
        K_CAPTURED: captured_ns,
        K_EXCHANGE: message.exchange,
        K_ROUTING_KEY: message.routing_key,
        K_PROPS: raw,
        K_BODY: message.body,
    }
    if message.redelivered:
        m[K_REDELIVERED] = True
    if fingerprint is not None:
        m[K_FINGERPRINT] = fingerprint
    if mark is not None:
        m[K_COPY_OF if mark.proven else K_POSSIBLE_COPY_OF] = mark.seq
    if snapshot is not None:
        m[K_SNAPSHOT] = snapshot
    message_id, timestamp = filter_fields(raw)
    if message_id is not None:
        m[K_MESSAGE_ID] = message_id
    if timestamp is not None:
        m[K_TIMESTAMP] = timestamp
    return m


def stream_record_map(seq: int, captured_ns: int, encoded: bytes, offset: int, chunk_ts_ms: int) -> dict[str, Any]:
    return {
        K_KIND: RecordKind.STREAM,
        K_SEQ: seq,
        K_CAPTURED: captured_ns,
        K_BODY: encoded,
        K_OFFSET: offset,
        K_CHUNK_TS: chunk_ts_ms,
    }


_u32 = struct.Struct(">I")
_u64 = struct.Struct(">Q")


def filter_fields(raw: bytes) -> tuple[str | None, int | None]:
    """message-id and timestamp out of a property section, by walking the fields before them.

    Decoding every property (pamqp) costs more than the rest of the record, and these two sit early
    in the section, behind at most one table that can be skipped by its length. Straight-line on
    purpose: this runs for every archived message.
    """
    if len(raw) < 2:
        return None, None
    flags = raw[0] << 8 | raw[1]
    if not flags & 0x00C0:  # neither message-id (bit 7) nor timestamp (bit 6)
        return None, None
    pos = 2
    try:
        while raw[pos - 1] & 1:  # further flag words follow (none are defined; skipped)
            pos += 2
        if flags & 0x8000:  # content-type: shortstr
            pos += 1 + raw[pos]
        if flags & 0x4000:  # content-encoding: shortstr
            pos += 1 + raw[pos]
        if flags & 0x2000:  # headers: table, skipped whole
            pos += 4 + _u32.unpack_from(raw, pos)[0]
        if flags & 0x1000:  # delivery-mode: octet
            pos += 1
        if flags & 0x0800:  # priority: octet
            pos += 1
        if flags & 0x0400:  # correlation-id: shortstr
            pos += 1 + raw[pos]
        if flags & 0x0200:  # reply-to: shortstr
            pos += 1 + raw[pos]
        if flags & 0x0100:  # expiration: shortstr
            pos += 1 + raw[pos]
        message_id = None
        if flags & 0x0080:
            length = raw[pos]
            message_id = raw[pos + 1 : pos + 1 + length].decode("utf-8", "replace")
            pos += 1 + length
        timestamp = _u64.unpack_from(raw, pos)[0] if flags & 0x0040 else None
    except (IndexError, struct.error):
        return None, None  # a malformed section is archived as is; only the filter fields are lost
    return message_id, timestamp


_KINDS = {kind.value: kind for kind in RecordKind}


def record_from_map(m: dict[str, Any]) -> Record:
    # Positional, in Record's field order: a replay builds one per message, and keywords cost 60% more.
    # m[K_SEQ] comes first, so that a record that is not a map fails as TypeError (ArchiveCorrupt upstream).
    return Record(
        m[K_SEQ],
        m[K_CAPTURED],
        _KINDS[m[K_KIND]],
        m[K_BODY],
        m.get(K_EXCHANGE, ""),
        m.get(K_ROUTING_KEY, ""),
        m.get(K_PROPS, b""),
        m.get(K_REDELIVERED, False),
        m.get(K_OFFSET),
        m.get(K_CHUNK_TS),
        m.get(K_FINGERPRINT),
        m.get(K_COPY_OF),
        m.get(K_POSSIBLE_COPY_OF),
        m.get(K_SNAPSHOT),
    )
