"""The gap ledger: when a source was not being archived, and what the broker dropped before we read it.

The archiver notes, per source, when it starts consuming, when it stops (cleanly, on an error, or
handing the source to another archiver) and, for streams, offsets it never saw because the stream's
retention removed them first. Each note is one small immutable object:

    <prefix>/<vhost>/<kind>/<name>/_ledger/<at_ns, 20 digits>-<event>-<run tag>   msgpack {format, event,
                                                                                 at_ns, run, reason?,
                                                                                 from_offset?, to_offset?}

`find_gaps` turns the notes into the spells nobody archived the source (docs/FORMAT.md, "Gap ledger"):
for a queue its messages waited in the broker and were captured late (unless the broker dropped them:
TTL, max-length); for a stream, skipped offsets are messages the archive never got.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bridge.archive import layout
from bridge.archive.record import Source
from bridge.archive.segment import SegmentIndex
from bridge.archive.small_object import decode_object, encode_object
from bridge.concurrency import at_most
from bridge.timespec import format_duration, format_span, format_time
from sinks import Sink

LEDGER = "_ledger"
LEDGERS_IN_FLIGHT = 16  # ledgers, and entries of one ledger, read at once


class Event(enum.StrEnum):
    STARTED = "started"  # consuming (a session of a run began)
    STOPPED = "stopped"  # the archiver stopped, everything it had taken durable
    INTERRUPTED = "interrupted"  # consumption ended on an error (`reason`)
    HANDED_OVER = "handed-over"  # another archiver of the same configuration takes the source
    SKIPPED = "skipped"  # stream offsets `from_offset`..`to_offset` were gone before they were read


@dataclass(frozen=True)
class LedgerEntry:
    at_ns: int
    event: Event
    run: str  # which archiver process: host, pid and start time
    reason: str | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"event": str(self.event), "at_ns": self.at_ns, "run": self.run}
        if self.reason is not None:
            fields["reason"] = self.reason
        if self.from_offset is not None and self.to_offset is not None:
            fields["from_offset"], fields["to_offset"] = self.from_offset, self.to_offset
        return fields

    @classmethod
    def from_fields(cls, m: dict[str, Any]) -> LedgerEntry:
        reason = m.get("reason")
        low, high = m.get("from_offset"), m.get("to_offset")
        return cls(
            int(m["at_ns"]),
            Event(m["event"]),
            str(m["run"]),
            str(reason) if reason is not None else None,
            int(low) if low is not None else None,
            int(high) if high is not None else None,
        )


def ledger_prefix(prefix: str, source: Source) -> str:
    return layout.source_prefix(prefix, source) + LEDGER + "/"


def entry_key(prefix: str, source: Source, entry: LedgerEntry) -> str:
    tag = hashlib.blake2b(entry.run.encode(), digest_size=4).hexdigest()  # two archivers never share a key
    return ledger_prefix(prefix, source) + f"{entry.at_ns:020d}-{entry.event}-{tag}"


async def write_entry(sink: Sink, prefix: str, source: Source, entry: LedgerEntry) -> None:
    await sink.put(entry_key(prefix, source, entry), encode_object(entry.fields()))


async def read_ledger(sink: Sink, prefix: str, source: Source) -> list[LedgerEntry]:
    """The source's ledger, oldest first; an unreadable entry is an ArchiveCorrupt naming its key."""
    keys = [info.key async for info in sink.list(ledger_prefix(prefix, source))]
    datas = await at_most(LEDGERS_IN_FLIGHT, [sink.get(key) for key in keys])
    entries = [
        decode_object(data, key, "ledger entry", LedgerEntry.from_fields) for key, data in zip(keys, datas, strict=True)
    ]
    return sorted(entries, key=lambda e: e.at_ns)


async def entry_keys(sink: Sink, prefix: str, source: Source) -> list[tuple[int, str]]:
    """The source's ledger entries as (time, key), oldest first, from their names alone."""
    found = []
    async for info in sink.list(ledger_prefix(prefix, source)):
        stamp = info.key.rsplit("/", 1)[-1][:20]
        if stamp.isdigit():
            found.append((int(stamp), info.key))
    return sorted(found)


@dataclass(frozen=True)
class Gap:
    """A spell in which nobody archived the source, or (stream) offsets lost before they were read."""

    start_ns: int
    end_ns: int | None  # None: still open when the ledger ends (nothing archives the source since)
    reason: str
    skipped: tuple[int, int] | None = None  # first and last stream offset never archived

    @property
    def lost(self) -> int:
        """Offsets the archive never got (at most that many messages: the broker spends some offsets on
        offset tracking); 0 for a spell of not archiving."""
        return 0 if self.skipped is None else self.skipped[1] - self.skipped[0] + 1

    def overlaps(self, since_ns: int | None, until_ns: int | None) -> bool:
        """Whether the gap touches [since, until] (either end open when None)."""
        if until_ns is not None and self.start_ns > until_ns:
            return False
        return since_ns is None or self.end_ns is None or self.end_ns >= since_ns

    def line(self) -> str:
        if self.skipped is not None:
            low, high = self.skipped
            lost = f"stream offsets {low}..{high} lost (up to {self.lost} messages)"
            return f"{format_time(self.start_ns)}  {lost}: {self.reason}"
        if self.end_ns is None:
            return f"{format_time(self.start_ns)} .. (open)  not archived since: {self.reason}"
        took = format_duration(self.end_ns - self.start_ns)
        return f"{format_span(self.start_ns, self.end_ns)} ({took})  not archived: {self.reason}"

    def to_json(self) -> dict[str, object]:
        return {
            "start": format_time(self.start_ns),
            "end": format_time(self.end_ns) if self.end_ns is not None else None,
            "reason": self.reason,
            "lost_offsets": list(self.skipped) if self.skipped is not None else None,
        }


UNANNOUNCED = "the archiver ended without a word (killed, or its host went down)"
RETENTION = "removed by the stream's retention before the archiver read them"
_DOWN = {Event.STOPPED: "the archiver was stopped", Event.HANDED_OVER: "handed to another archiver"}


def find_gaps(
    entries: Iterable[LedgerEntry], last_capture_before: Callable[[int], int | None] | None = None
) -> list[Gap]:
    """The gaps the ledger shows, in time order.

    A run's consumption lasts from its `started` to its next `stopped`, `interrupted` or `handed-over`;
    the spell until the next `started` is a gap. One still open at the end is a gap only if an error
    ended consumption: after a clean stop the archive simply ends there.
    A `started` of another run while one still consumed means that one ended without a word: the gap
    begins at its last sign of life, its last ledger entry or, later, the last record captured before
    the new run (`last_capture_before`, from the segments' footers).
    """
    last_seen: dict[str, int] = {}

    def ended_at(run: str, before_ns: int) -> int:
        """When a run that ended without a word was last seen alive: its last note, or its last record."""
        captured = last_capture_before(before_ns) if last_capture_before is not None else None
        return min(max(last_seen[run], captured or 0), before_ns)

    gaps: list[Gap] = []
    consuming: str | None = None  # the run consuming, as far as the ledger says
    down: tuple[int, str, Event] | None = None  # since when, why and how nobody consumes
    for entry in sorted(entries, key=lambda e: e.at_ns):
        if entry.event is Event.SKIPPED:
            if entry.from_offset is not None and entry.to_offset is not None:
                lost = (entry.from_offset, entry.to_offset)
                gaps.append(Gap(entry.at_ns, entry.at_ns, entry.reason or RETENTION, lost))
        elif entry.event is Event.STARTED:
            if down is not None:
                gaps.append(Gap(down[0], entry.at_ns, down[1]))
            elif consuming is not None and consuming != entry.run:
                gaps.append(Gap(ended_at(consuming, entry.at_ns), entry.at_ns, UNANNOUNCED))
            consuming, down = entry.run, None
        elif down is None:
            why = entry.reason or _DOWN.get(entry.event, "consumption ended")
            if consuming is not None and consuming != entry.run:  # a new run failing, after one that vanished
                down = (ended_at(consuming, entry.at_ns), f"{UNANNOUNCED}; then {why}", entry.event)
            else:
                down = (entry.at_ns, why, entry.event)
            consuming = None
        last_seen[entry.run] = entry.at_ns
    if down is not None and down[2] is Event.INTERRUPTED:
        gaps.append(Gap(down[0], None, down[1]))  # a clean stop at the end is where the archive ends, no gap yet
    return sorted(gaps, key=lambda g: g.start_ns)


async def source_gaps(sink: Sink, prefix: str, source: Source, indexes: Iterable[SegmentIndex] = ()) -> list[Gap]:
    """The source's gaps; `indexes` (its segments' footers, if read already) date the end of a run that
    ended without a word by its last captured record."""
    captures = sorted(i.last_captured_ns for i in indexes if i.source == source)

    def last_capture_before(t: int) -> int | None:
        i = bisect.bisect_left(captures, t)
        return captures[i - 1] if i else None

    return find_gaps(await read_ledger(sink, prefix, source), last_capture_before)


async def archive_gaps(sink: Sink, indexes: list[SegmentIndex], prefix: str = "") -> dict[Source, list[Gap]]:
    """The gaps of every source the footers name."""
    sources = sorted({i.source for i in indexes})
    found = await at_most(LEDGERS_IN_FLIGHT, [source_gaps(sink, prefix, s, indexes) for s in sources])
    return dict(zip(sources, found, strict=True))
