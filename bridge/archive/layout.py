"""Where things live in an archive: keys for segments, checkpoints and definitions.

    <prefix>/<vhost>/<queue|stream>/<name>/<YYYY>/<MM>/<DD>/<HH>/<first seq, 20 digits>.wseg
    <prefix>/<vhost>/<queue|stream>/<name>/_checkpoint
    <prefix>/<vhost>/<queue|stream>/<name>/_source       only where a name is hashed (below)
    <prefix>/_definitions/<YYYY>/<MM>/<DD>/<capture time ns, 20 digits>.json.zst

Vhost and source names are percent-encoded (UTF-8) so that any name RabbitMQ allows maps to one safe
path segment: ASCII letters, digits, '-', '.', '_', '~' and non-ASCII letters, marks, numbers, symbols
and punctuation stay as they are; every other character is escaped, and so is a leading '.' or '_' (no
'.', '..' or hidden names; '_' at the top is warren's own). An escaped name longer than a path segment
allows (255 bytes: a 255-byte name of spaces and slashes escapes to 765) is *hashed*: a readable head
of the escaped form, `%~`, and a hash of the whole name. `escape` never writes `%~` (its '%' is always
followed by two hex digits), so a hashed segment never equals an escaped one; the source's real names
are then in its `_source` object and in every segment's header, which readers consult (reader.py).
Partitions are the UTC hour of the capture time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from bridge.archive.record import Source, SourceKind
from bridge.archive.segment import segment_name, seq_range_from_name

CHECKPOINT = "_checkpoint"
PRUNED = "_pruned"  # what retention removed (pruned.py)
SOURCE_OBJECT = "_source"
DEFINITIONS = "_definitions"
DEFINITIONS_SUFFIX = ".json.zst"


MAX_SEGMENT_BYTES = 255  # a path segment on common filesystems and object stores
HASH_MARK = "%~"
_HASH_HEX = 32  # BLAKE2b-128 of the name's UTF-8, in lower-case hex
_HEAD_BYTES = MAX_SEGMENT_BYTES - len(HASH_MARK) - _HASH_HEX
_HASHED = re.compile(rf"[^/]+{re.escape(HASH_MARK)}[0-9a-f]{{{_HASH_HEX}}}")
_ESCAPE_TOKEN = re.compile(r"%[0-9A-F]{2}|.", re.S)


def _kept(char: str) -> bool:
    if char.isascii():
        return char.isalnum() or char in "-._~"
    return unicodedata.category(char)[0] not in "CZ"  # letters, marks, numbers, symbols, punctuation


def escape(name: str) -> str:
    """The escaped form of a name, whatever its length (`path_segment` is what goes into keys)."""
    if name == "":
        return "%"  # never a valid queue or vhost name; a lone '%' is never produced by escaping
    escaped = "".join(c if _kept(c) else quote(c, safe="") for c in name)
    if escaped[0] in "._":
        escaped = f"%{ord(escaped[0]):02X}" + escaped[1:]
    return escaped


def path_segment(name: str) -> str:
    """The one path segment a vhost or source name lives under: its escaped form if that fits in 255
    bytes, else the hashed form (a head of the escaped form, `%~`, a hash of the whole name)."""
    escaped = escape(name)
    if len(escaped.encode()) <= MAX_SEGMENT_BYTES:
        return escaped
    head, size = [], 0
    for token in _ESCAPE_TOKEN.findall(escaped):  # never cut an escape or a character in two
        size += len(token.encode())
        if size > _HEAD_BYTES:
            break
        head.append(token)
    digest = hashlib.blake2b(name.encode(), digest_size=_HASH_HEX // 2).hexdigest()
    return "".join(head) + HASH_MARK + digest


def is_hashed(segment: str) -> bool:
    """Whether a path segment is in the hashed form, whose name only `_source` or a segment header tells."""
    return _HASHED.fullmatch(segment) is not None


def has_hashed_names(source: Source) -> bool:
    """Whether the source's directory cannot tell its names, so that the writer records them in `_source`."""
    return is_hashed(path_segment(source.vhost)) or is_hashed(path_segment(source.name))


def unescape(segment: str) -> str:
    return "" if segment == "%" else unquote(segment, errors="strict")


def canonical_unescape(segment: str) -> str:
    """Unescape, refusing (ValueError) any form `escape` would not have written, so that one source
    never appears under two directories."""
    name = unescape(segment)
    if path_segment(name) != segment:
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
    """The source's directory, ending in '/': a function of the source alone, never shared by two."""
    return join(prefix, path_segment(source.vhost), str(source.kind), path_segment(source.name)) + "/"


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


def pruned_key(prefix: str, source: Source) -> str:
    return source_prefix(prefix, source) + PRUNED


def source_object_key(prefix: str, source: Source) -> str:
    return source_prefix(prefix, source) + SOURCE_OBJECT


def definitions_key(prefix: str, captured_ns: int) -> str:
    return join(prefix, DEFINITIONS, partition(captured_ns)[:10], f"{captured_ns:020d}{DEFINITIONS_SUFFIX}")


@dataclass(frozen=True)
class SegmentKey:
    """A segment key taken apart."""

    key: str
    source: Source
    hour_ns: int
    first_seq: int
    compacted_to: int | None = None  # a compacted segment's last sequence, as its name says


# Sources whose directory is hashed, by directory (`source_prefix`), as readers learnt them (reader.py).
KnownSources = Mapping[str, Source]


def _source_parts(prefix: str, key: str) -> list[str] | None:
    """The vhost, kind and name segments of the source directory `key` lies in, if it lies in one."""
    rest = _under(prefix, key)
    if rest is None:
        return None
    parts = rest.split("/")
    if len(parts) < 4 or parts[1] not in (SourceKind.QUEUE, SourceKind.STREAM):
        return None
    return parts[:3]


def hashed_source_dir(prefix: str, key: str) -> str | None:
    """The source directory (as `source_prefix` writes it) that `key` lies in, if its vhost or name is hashed."""
    parts = _source_parts(prefix, key)
    if parts is None or not (is_hashed(parts[0]) or is_hashed(parts[2])):
        return None
    return join(prefix, *parts) + "/"


def _source_of(prefix: str, parts: list[str], known: KnownSources | None) -> Source | None:
    """The source of a directory's three segments: from its escaped names, or from `known` if hashed."""
    vhost, kind, name = parts
    if is_hashed(vhost) or is_hashed(name):
        return (known or {}).get(join(prefix, vhost, kind, name) + "/")
    try:
        return Source(canonical_unescape(vhost), SourceKind(kind), canonical_unescape(name))
    except ValueError:  # UnicodeDecodeError included
        return None


def parse_segment_key(prefix: str, key: str, known: KnownSources | None = None) -> SegmentKey | None:
    """The parts of a segment key under `prefix`, or None for anything else (checkpoints, temp files,
    and segments of a hashed directory that `known` does not name)."""
    rest = _under(prefix, key)
    if rest is None:
        return None
    parts = rest.split("/")
    if len(parts) != 8:
        return None
    vhost, kind, name, year, month, day, hour, leaf = parts
    seqs = seq_range_from_name(leaf)
    if seqs is None or kind not in (SourceKind.QUEUE, SourceKind.STREAM):
        return None
    try:
        when = dt.datetime(int(year), int(month), int(day), int(hour), tzinfo=dt.UTC)
    except ValueError:
        return None
    source = _source_of(prefix, [vhost, kind, name], known)
    if source is None:
        return None
    return SegmentKey(key, source, int(when.timestamp()) * 1_000_000_000, seqs[0], seqs[1])


def parse_source_prefix(prefix: str, key: str, known: KnownSources | None = None) -> Source | None:
    """The source whose directory `key` lies in, if it lies in one (a hashed one only if `known` names it)."""
    parts = _source_parts(prefix, key)
    return None if parts is None else _source_of(prefix, parts, known)
