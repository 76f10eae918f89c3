"""What a replay did, per source: the summary an operator reads at the end."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from bridge.archive.record import Record, Source
from bridge.timespec import format_time


@dataclass
class SourceOutcome:
    source: Source
    target: str  # where the records went, e.g. "queue 'orders' in vhost '/'"
    replayed: int = 0
    bytes: int = 0
    skipped_duplicates: int = 0
    already_confirmed: int = 0  # archive sequence up to which the state file says the target has everything
    in_doubt: int = 0  # published but unconfirmed when a previous run stopped: may now be duplicated
    first_ns: int | None = None
    last_ns: int | None = None
    corrupt: list[str] = field(default_factory=list)
    error: str | None = None

    def covered(self, record: Record) -> None:
        t = record.time_ns
        self.first_ns = t if self.first_ns is None else min(self.first_ns, t)
        self.last_ns = t if self.last_ns is None else max(self.last_ns, t)

    def line(self) -> str:
        span = f"{format_time(self.first_ns)} .. {format_time(self.last_ns)}" if self.first_ns is not None else "-"
        text = (
            f"{'FAILED' if self.error else 'done  '} {self.source} -> {self.target}: {self.replayed} replayed, "
            f"{self.skipped_duplicates} duplicates skipped, covering {span}"
        )
        if self.already_confirmed:
            text += f"; sequences up to {self.already_confirmed} were already confirmed by an earlier run"
        if self.in_doubt:
            text += f"; {self.in_doubt} were in doubt from the interrupted run and were published again"
        for c in self.corrupt:
            text += f"\n       skipped corrupt segment {c}"
        if self.error:
            text += f"\n       {self.error}"
        return text


class DuplicateFilter:
    """Drops a redelivered record whose content matches a record seen shortly before it.

    The archiver marks redeliveries; after a crash between the durable write and the ack, the broker
    redelivers within a prefetch window or so, so a bounded memory of recent records suffices. The
    memory holds Python's 64-bit hash of each record's content (cheap, and only compared within this
    process); a redelivered copy with a matching hash is a duplicate.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[int, None] = OrderedDict()

    def is_duplicate(self, record: Record) -> bool:
        key = hash((record.exchange, record.routing_key, record.raw_properties, record.body))
        if record.redelivered and key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False
