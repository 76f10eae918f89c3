"""Where things live in an archive: keys for segments, checkpoints and definitions.

    <prefix>/<vhost>/<queue|stream>/<name>/<YYYY>/<MM>/<DD>/<HH>/<first seq, 20 digits>.wseg
    <prefix>/<vhost>/<queue|stream>/<name>/_checkpoint
    <prefix>/_definitions/<YYYY>/<MM>/<DD>/<capture time ns, 20 digits>.json.zst

Vhost and source names are percent-encoded (UTF-8) so that any name RabbitMQ allows maps to one safe
path segment and back: ASCII letters, digits, '-', '.', '_', '~' and non-ASCII letters, marks, numbers,
symbols and punctuation stay as they are (so a 255-byte name stays within one path segment); every
other character is escaped, and so is a leading '.' or '_' (no '.', '..' or hidden names; '_' at the
top is warren's own).
Partitions are the UTC hour of the capture time.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote, unquote

from bridge.archive.record import Source, SourceKind
from bridge.archive.segment import first_seq_from_name, segment_name

CHECKPOINT = "_checkpoint"
DEFINITIONS = "_definitions"
DEFINITIONS_SUFFIX = ".json.zst"


MAX_SEGMENT_BYTES = 255  # a path segment on common filesystems and object stores


class NameTooLong(ValueError):
    """An escaped name would not fit one path segment."""


def _kept(char: str) -> bool:
    if char.isascii():
        return char.isalnum() or char in "-._~"
    return unicodedata.category(char)[0] not in "CZ"  # letters, marks, numbers, symbols, punctuation


def escape(name: str) -> str:
    if name == "":
        return "%"  # never a valid queue or vhost name; a lone '%' is never produced by escaping
    escaped = "".join(c if _kept(c) else quote(c, safe="") for c in name)
    if escaped[0] in "._":
        escaped = f"%{ord(escaped[0]):02X}" + escaped[1:]
    if len(escaped.encode()) > MAX_SEGMENT_BYTES:
        raise NameTooLong(f"{name!r} takes {len(escaped.encode())} bytes escaped, more than {MAX_SEGMENT_BYTES}")
    return escaped


def unescape(segment: str) -> str:
    return "" if segment == "%" else unquote(segment, errors="strict")


def canonical_unescape(segment: str) -> str:
    """Unescape, refusing (ValueError) any form `escape` would not have written, so that one source
    never appears under two directories."""
    name = unescape(segment)
    if escape(name) != segment:
        raise ValueError(f"{segment!r} is not an escaped name warren writes")
    return name


def _under(prefix: str, key: str) -> str | None:
    """`key` relative to `prefix`, or None if it does not lie under it."""
    base = join(prefix)
    if not base:
        return key
    return key[len(base) + 1 :] if key.startswith(base + "/") else None


def join(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix.strip("/"), *parts) if p)


def source_prefix(prefix: str, source: Source) -> str:
    return join(prefix, escape(source.vhost), str(source.kind), escape(source.name)) + "/"


def partition(captured_ns: int) -> str:
    t = dt.datetime.fromtimestamp(captured_ns // 1_000_000_000, dt.UTC)  # integer: no rounding into the next hour
    return f"{t:%Y/%m/%d/%H}"


def partition_start_ns(captured_ns: int) -> int:
    """Start of the UTC hour holding `captured_ns`; a segment never crosses into the next one."""
    hour = 3600 * 1_000_000_000
    return captured_ns - captured_ns % hour


def segment_key(prefix: str, source: Source, first_seq: int, first_captured_ns: int) -> str:
    return source_prefix(prefix, source) + partition(first_captured_ns) + "/" + segment_name(first_seq)


def checkpoint_key(prefix: str, source: Source) -> str:
    return source_prefix(prefix, source) + CHECKPOINT


def definitions_key(prefix: str, captured_ns: int) -> str:
    return join(prefix, DEFINITIONS, partition(captured_ns)[:10], f"{captured_ns:020d}{DEFINITIONS_SUFFIX}")


@dataclass(frozen=True)
class SegmentKey:
    """A segment key taken apart."""

    key: str
    source: Source
    hour_ns: int
    first_seq: int


def parse_segment_key(prefix: str, key: str) -> SegmentKey | None:
    """The parts of a segment key under `prefix`, or None for anything else (checkpoints, temp files)."""
    rest = _under(prefix, key)
    if rest is None:
        return None
    parts = rest.split("/")
    if len(parts) != 8:
        return None
    vhost, kind, name, year, month, day, hour, leaf = parts
    first_seq = first_seq_from_name(leaf)
    if first_seq is None or kind not in (SourceKind.QUEUE, SourceKind.STREAM):
        return None
    try:
        when = dt.datetime(int(year), int(month), int(day), int(hour), tzinfo=dt.UTC)
        source = Source(canonical_unescape(vhost), SourceKind(kind), canonical_unescape(name))
    except (ValueError, UnicodeDecodeError):
        return None
    return SegmentKey(key, source, int(when.timestamp()) * 1_000_000_000, first_seq)


def parse_source_prefix(prefix: str, key: str) -> Source | None:
    """The source whose directory `key` lies in, if it lies in one."""
    rest = _under(prefix, key)
    if rest is None:
        return None
    parts = rest.split("/")
    if len(parts) < 4 or parts[1] not in (SourceKind.QUEUE, SourceKind.STREAM):
        return None
    try:
        return Source(canonical_unescape(parts[0]), SourceKind(parts[1]), canonical_unescape(parts[2]))
    except ValueError:  # UnicodeDecodeError included
        return None
