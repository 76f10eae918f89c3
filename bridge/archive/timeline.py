"""Message density per source over time, from the segments' footers alone (`warren ls --timeline`).

Each footer's block index gives a block's record count and its time range; a block's records are spread
evenly over that range, so the picture needs no record read. Time is what point-in-time replay compares
(the capture time for queue records, the broker's chunk time for stream records).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.archive.ledger import Gap
from bridge.archive.record import Source
from bridge.archive.segment import SegmentIndex
from bridge.timespec import format_time

LEVELS = " ▁▂▃▄▅▆▇█"  # a bucket's records against the source's busiest bucket
EMPTY = "·"  # no record in a bucket between the source's first and last: a quiet spell
NOT_ARCHIVED = "░"  # no record, and the gap ledger says nobody archived the source then
LOST = "!"  # stream offsets lost to retention before they were archived, noted then
DEFAULT_WIDTH = 60


@dataclass
class Timeline:
    """Buckets of equal length over [start_ns, end_ns), per source."""

    start_ns: int
    end_ns: int
    width: int
    counts: dict[Source, list[float]] = field(default_factory=dict)
    spans: dict[Source, tuple[int, int]] = field(default_factory=dict)  # first and last record time
    estimated: set[Source] = field(default_factory=set)  # sources with a block only partly in the window
    gaps: dict[Source, list[Gap]] = field(default_factory=dict)

    @property
    def bucket_ns(self) -> int:
        return max(1, -(-(self.end_ns - self.start_ns) // self.width))

    def add(self, index: SegmentIndex) -> None:
        counts = self.counts.setdefault(index.source, [0.0] * self.width)
        first, last = self.spans.get(index.source, (index.min_time_ns, index.max_time_ns))
        self.spans[index.source] = (min(first, index.min_time_ns), max(last, index.max_time_ns))
        for block in index.blocks:
            if not self._spread(counts, block.records, block.min_time_ns, block.max_time_ns):
                self.estimated.add(index.source)

    def _spread(self, counts: list[float], records: int, low: int, high: int) -> bool:
        """`records` spread evenly over [low, high] and one mean gap between records past it (each record
        stands for the time until the next), into the buckets that overlaps; False if only partly."""
        whole = low >= self.start_ns and high <= self.end_ns - 1
        if records > 1:
            high += max(0, (high - low) // (records - 1) - 1)
            if whole:
                high = min(high, self.end_ns - 1)  # a block wholly in the window counts whole, in it
        span = high - low + 1
        low, high = max(low, self.start_ns), min(high, self.end_ns - 1)
        if high < low:
            return whole  # outside the window
        first, last = self._bucket(low), self._bucket(high)
        for b in range(first, last + 1):
            bucket_start = self.start_ns + b * self.bucket_ns
            overlap = min(high + 1, bucket_start + self.bucket_ns) - max(low, bucket_start)
            counts[b] += records * overlap / span
        return whole

    def _bucket(self, t: int) -> int:
        return min(self.width - 1, (t - self.start_ns) // self.bucket_ns)

    def render(self) -> str:
        if not self.counts:
            return "the archive holds no record in this window"
        labels = {source: f"{source.vhost} {source.kind} {source.name}" for source in self.counts}
        pad = max(len(label) for label in labels.values())
        lines = []
        for source in sorted(self.counts):
            counts = self.counts[source]
            busiest = max(counts) or 1.0
            first, last = (self._bucket(max(t, self.start_ns)) for t in self.spans[source])
            down, lost = self._gap_buckets(self.gaps.get(source, []))
            cells = []
            for b, count in enumerate(counts):
                if b in lost:
                    cells.append(LOST)
                elif count > 0:
                    cells.append(LEVELS[max(1, round(count / busiest * (len(LEVELS) - 1)))])
                elif b in down:
                    cells.append(NOT_ARCHIVED)
                else:
                    cells.append(EMPTY if first <= b <= last else " ")
            total = f"~{round(sum(counts))}" if source in self.estimated else str(round(sum(counts)))
            lines.append(f"{labels[source].ljust(pad)}  |{''.join(cells)}|  {total} records")
        axis = f"{format_time(self.start_ns)} .. {format_time(self.end_ns)}"
        lines.append(f"{''.ljust(pad)}   {axis}, {_duration(self.bucket_ns)} a column")
        lines.append(f"{''.ljust(pad)}   {EMPTY} no record in that column (a quiet spell)")
        if any(self.gaps.values()):
            legend = f"{NOT_ARCHIVED} not archived then, {LOST} stream offsets lost (warren inspect --gaps)"
            lines.append(f"{''.ljust(pad)}   {legend}")
        return "\n".join(lines)

    def _gap_buckets(self, gaps: list[Gap]) -> tuple[set[int], set[int]]:
        """The columns a spell of not archiving covers, and those where stream offsets were lost."""
        down: set[int] = set()
        lost: set[int] = set()
        for gap in gaps:
            end = gap.end_ns if gap.end_ns is not None else self.end_ns - 1
            if end < self.start_ns or gap.start_ns >= self.end_ns:
                continue
            low, high = self._bucket(max(gap.start_ns, self.start_ns)), self._bucket(min(end, self.end_ns - 1))
            (lost if gap.skipped is not None else down).update(range(low, high + 1))
        return down, lost


def timeline(
    indexes: Iterable[SegmentIndex],
    *,
    since_ns: int | None,
    until_ns: int | None,
    width: int,
    gaps: dict[Source, list[Gap]] | None = None,
) -> Timeline:
    """The timeline of `indexes` over [since, until]; either end, when not given, is the archive's own.
    `gaps` (the gap ledger's, per source) marks when nobody archived a source."""
    indexes = list(indexes)
    start = since_ns if since_ns is not None else min((i.min_time_ns for i in indexes), default=0)
    end = until_ns if until_ns is not None else max((i.max_time_ns for i in indexes), default=0)
    line = Timeline(start, max(end + 1, start + width), width, gaps=gaps or {})
    for index in indexes:
        if index.max_time_ns >= line.start_ns and index.min_time_ns < line.end_ns:
            line.add(index)
    return line


def _duration(ns: int) -> str:
    seconds = ns / 1e9
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"
