"""`warren inspect`: the records of an archive or of one segment file, filtered, one per line."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import decimal
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.archive.clocks import BY_HELP, CLOCKS, Clock
from bridge.archive.layout import SegmentKey
from bridge.archive.ledger import archive_gaps
from bridge.archive.reader import TimeRange, list_segments, read_footers, read_index, read_records
from bridge.archive.record import Record, RecordKind, Source, SourceKind
from bridge.archive.segment import iter_records
from bridge.archive.segment import read_index as read_segment_index
from bridge.errors import EXIT_OK, ConfigError
from bridge.timespec import format_time, parse_time
from protocol.core.message import PROPERTY_NAMES, Properties
from protocol.loop import run
from sinks import Sink, open_sink

_MISSING = object()


@dataclass
class RecordFilter:
    """What an operator digs for: property values, header paths, routing keys, body text."""

    window: TimeRange = field(default_factory=TimeRange)
    where: list[tuple[list[str], str | None]] = field(default_factory=list)
    routing_key: re.Pattern[str] | None = None
    grep: re.Pattern[bytes] | None = None

    @classmethod
    def build(
        cls,
        since: str | None,
        until: str | None,
        where: Sequence[str],
        routing_key: str | None,
        grep: str | None,
        by: str | None = None,
    ) -> RecordFilter:
        window = TimeRange(
            parse_time(since, what="--since") if since else None,
            parse_time(until, what="--until") if until else None,
            Clock(by) if by else None,
        )
        conditions = []
        for clause in where:
            path, sep, value = clause.partition("=")
            parts = path.strip().split(".", 1) if path.startswith("headers.") else [path.strip()]
            if parts[0] not in PROPERTY_NAMES and parts[0] != "type":
                raise ConfigError(
                    f"--where {clause!r}: {parts[0]!r} is not a message property "
                    f"(one of {', '.join(PROPERTY_NAMES)}, or headers.NAME)"
                )
            conditions.append((parts, value if sep else None))
        try:
            body_re = re.compile(grep.encode()) if grep else None
        except re.error as err:
            raise ConfigError(f"--grep {grep!r} is not a regular expression: {err}") from err
        return cls(window, conditions, topic_pattern(routing_key) if routing_key else None, body_re)

    def matches(self, record: Record) -> bool:
        if not self.window.holds(record):
            return False
        if self.routing_key is not None and not self.routing_key.fullmatch("." + record.routing_key):
            return False
        if self.grep is not None and not self.grep.search(record.body):
            return False
        return all(_property_matches(record, path, value) for path, value in self.where)


def topic_pattern(pattern: str) -> re.Pattern[str]:
    """An AMQP topic pattern, matched against "." + routing key: `*` is one word, `#` zero or more."""
    pieces = {"*": r"\.[^.]*", "#": r"(?:\.[^.]*)*"}
    return re.compile("".join(pieces.get(word, r"\." + re.escape(word)) for word in pattern.split(".")))


def _property_matches(record: Record, path: list[str], expected: str | None) -> bool:
    if record.kind is not RecordKind.AMQP091:
        return False
    props = record.properties
    value: Any = getattr(props, "message_type" if path[0] == "type" else path[0])
    if len(path) == 2:
        value = (value or {}).get(path[1], _MISSING) if isinstance(value, dict) or value is None else _MISSING
    if value is None or value is _MISSING:
        return False
    if expected is None:
        return True
    return _as_text(value) == expected


def _as_text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return format_time(int(value.timestamp()) * 1_000_000_000)
    if isinstance(value, (dict, list)):
        return json.dumps(to_json(value), sort_keys=True)
    return str(to_json(value))


def to_json(value: Any) -> Any:
    """AMQP field values as JSON: decimals as strings, timestamps as RFC 3339, byte arrays as base64."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return format_time(int(value.timestamp()) * 1_000_000_000)
    return value


def show_body(body: bytes) -> tuple[str, str]:
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode(), "base64"


def record_json(source: Source, record: Record) -> dict[str, Any]:
    body, encoding = show_body(record.body)
    out: dict[str, Any] = {
        "vhost": source.vhost,
        "kind": str(source.kind),
        "source": source.name,
        "seq": record.seq,
        "captured": format_time(record.captured_ns),
    }
    if record.kind is RecordKind.STREAM:
        out.update(offset=record.offset, chunk_time=format_time(record.time_ns), format="amqp-1.0")
    else:
        props = record.properties
        out.update(
            exchange=record.exchange,
            routing_key=record.routing_key,
            redelivered=record.redelivered,
            properties={name: to_json(value) for name, value in _present(props)},
        )
        if record.copy_of is not None:
            out["copy_of"] = record.copy_of
        if record.possible_copy_of is not None:
            out["possible_copy_of"] = record.possible_copy_of
        if record.snapshot is not None:
            out["snapshot"] = format_time(record.snapshot)
    out.update(body=body, body_encoding=encoding)
    return out


def _present(props: Properties) -> Iterator[tuple[str, Any]]:
    for name in PROPERTY_NAMES:
        value = getattr(props, name)
        if value is not None and not (name == "cluster_id" and value == ""):  # pamqp's default for "absent"
            yield name, value


def record_line(source: Source, record: Record) -> str:
    body, encoding = show_body(record.body)
    shown = body if len(body) <= 200 else body[:200] + f"... ({len(record.body)} bytes)"
    head = f"{format_time(record.captured_ns)}  {source.name}  #{record.seq}"
    if record.kind is RecordKind.STREAM:
        where = f"offset={record.offset} chunk={format_time(record.time_ns)}"
    else:
        where = f"exchange={record.exchange!r} routing_key={record.routing_key!r}"
        mid = record.properties.message_id
        if mid is not None:
            where += f" message_id={mid!r}"
        if record.redelivered:
            where += " redelivered"
        if record.copy_of is not None:
            where += f" copy-of=#{record.copy_of}"
        if record.possible_copy_of is not None:
            where += f" possible-copy-of=#{record.possible_copy_of}"
    return f"{head}  {where}  {'base64:' if encoding == 'base64' else ''}{json.dumps(shown, ensure_ascii=False)}"


async def archive_records(
    sink: Sink, source_name: str | None, vhost: str | None, window: TimeRange
) -> AsyncIterator[tuple[Source, Record]]:
    for seg in await list_segments(sink):
        if not _wanted(seg, source_name, vhost) or not window.may_hold(seg):
            continue
        if await _after_window(sink, seg, window):
            continue
        async for record in read_records(sink, seg, window):
            yield seg.source, record


async def _after_window(sink: Sink, seg: SegmentKey, window: TimeRange) -> bool:
    if window.until_ns is None or seg.hour_ns <= window.until_ns:
        return False
    if seg.source.kind is SourceKind.QUEUE:
        return True  # a queue record's time is its capture time, which the partition bounds
    return not window.overlaps(await read_index(sink, seg))  # a stream record's time is its chunk's


def _wanted(seg: SegmentKey, source_name: str | None, vhost: str | None) -> bool:
    return (source_name is None or seg.source.name == source_name) and (vhost is None or seg.source.vhost == vhost)


async def segment_file_records(path: Path, window: TimeRange) -> AsyncIterator[tuple[Source, Record]]:
    """The records of one segment file given by path: what an operator holding a single file has."""
    data = path.read_bytes()
    source = read_segment_index(data, str(path)).source
    for record in iter_records(data, str(path), **window.block_bounds):
        yield source, record


async def inspect_target(
    target: str,
    keep: RecordFilter,
    *,
    source: str | None = None,
    vhost: str | None = None,
    limit: int | None = None,
    as_json: bool = False,
) -> int:
    """Print matching records of a segment file or of a whole archive; returns how many."""
    path = Path(target)
    if path.is_file():
        return await inspect(segment_file_records(path, keep.window), keep, limit, as_json)
    async with open_sink(target) as sink:
        return await inspect(archive_records(sink, source, vhost, keep.window), keep, limit, as_json)


async def inspect(
    records: AsyncIterator[tuple[Source, Record]],
    keep: RecordFilter,
    limit: int | None,
    as_json: bool,
    out: Callable[[str], None] = print,
) -> int:
    shown = 0
    async for source, record in records:
        if limit is not None and shown >= limit:
            break
        if keep.matches(record):
            out(json.dumps(record_json(source, record), ensure_ascii=False) if as_json else record_line(source, record))
            shown += 1
    return shown


async def inspect_gaps(
    uri: str,
    window: TimeRange,
    *,
    source: str | None,
    vhost: str | None,
    as_json: bool,
    out: Callable[[str], None] = print,
) -> int:
    """Print the gap ledger's gaps of the archive's sources (in `window`); returns how many."""
    async with open_sink(uri) as sink:
        indexes = [i for i in await read_footers(sink) if _is(i.source, source, vhost)]
        gaps = await archive_gaps(sink, indexes)
    shown = 0
    for src, found in sorted(gaps.items()):
        found = [g for g in found if g.overlaps(window.since_ns, window.until_ns)]
        shown += len(found)
        if as_json:
            for gap in found:
                out(json.dumps({"vhost": src.vhost, "kind": str(src.kind), "source": src.name, **gap.to_json()}))
            continue
        lost = sum(g.lost for g in found)
        out(f"{src}: {len(found)} gaps" + (f", up to {lost} stream messages lost" if lost else ""))
        for gap in found:
            out(f"  {gap.line()}")
    if not gaps and not as_json:
        out("no source in the archive" + (" matches" if source or vhost else ""))
    return shown


def _is(src: Source, name: str | None, vhost: str | None) -> bool:
    return (name is None or src.name == name) and (vhost is None or src.vhost == vhost)


EXAMPLES = (
    "examples:\n"
    "  warren inspect file:///var/lib/warren --source orders.dlq --since -2h --where headers.x-death\n"
    "  warren inspect file:///var/lib/warren --source orders --grep timeout --limit 20\n"
    "  warren inspect file:///var/lib/warren --gaps --since -7d"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE|SEGMENT", help="archive URI or path, or one segment file")
    parser.add_argument("--source", metavar="NAME", help="only this queue or stream")
    parser.add_argument("--vhost", metavar="VHOST", help="only sources in this vhost")
    parser.add_argument("--since", metavar="T", help="records at or after T (RFC 3339, or relative: -15m, -2h)")
    parser.add_argument("--until", metavar="T", help="records at or before T")
    parser.add_argument("--by", choices=CLOCKS, help=BY_HELP)
    parser.add_argument("--limit", metavar="N", type=int, help="stop after N matching records")
    parser.add_argument(
        "--where",
        metavar="PROP[=VALUE]",
        action="append",
        default=[],
        help="property equals VALUE, or is present (message_id=42, headers.x-death); repeatable, all must hold",
    )
    parser.add_argument("--routing-key", metavar="PATTERN", help="AMQP topic pattern: orders.*.eu, audit.#")
    parser.add_argument("--grep", metavar="REGEX", help="body matches this regular expression")
    parser.add_argument("--json", action="store_true", help="JSON lines, for jq")
    parser.add_argument(
        "--gaps",
        action="store_true",
        help="instead of records, when each source was not archived and what stream offsets were lost (gap ledger)",
    )


def from_args(args: argparse.Namespace) -> int:
    keep = RecordFilter.build(args.since, args.until, args.where, args.routing_key, args.grep, args.by)
    if args.gaps:
        if args.where or args.routing_key or args.grep or args.limit is not None or args.by:
            raise ConfigError("--gaps lists gaps: --where, --routing-key, --grep, --limit and --by select records")
        if Path(args.archive).is_file():
            raise ConfigError(f"--gaps reads an archive's ledger; {args.archive} is one segment file")
        run(inspect_gaps(args.archive, keep.window, source=args.source, vhost=args.vhost, as_json=args.json))
        return EXIT_OK
    run(inspect_target(args.archive, keep, source=args.source, vhost=args.vhost, limit=args.limit, as_json=args.json))
    return EXIT_OK
