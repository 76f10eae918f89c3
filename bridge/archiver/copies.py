"""Recognising copies: a message the broker delivers again after warren archived it, because the
acknowledgement never took effect (the archiver crashed, or its connection dropped, in between).

At the start of a session the archiver reads back the records the broker may deliver again, and the
redelivered messages of the session are matched against them (docs/FORMAT.md, "Copies"):

- proven: the acknowledgement witness (witness.py) names the last record whose acknowledgement the
  broker applied, and warren consumes the queue exclusively. Every later record is unacknowledged, so
  the broker delivers each of them again, first and in their order. A redelivery with the content of
  the next of them (or of a later one: those between were removed meanwhile, e.g. expired) is a copy.
  The first delivery that is not a redelivery ends the matching: the broker sends requeued messages
  before any other, so nothing after it can be a copy.
- unproven (no witness message, as after a broker restart; or other consumers on the queue): the
  newest records are candidates, and a redelivery with the content of one of them is kept and marked
  a possible copy, never dropped.
- quorum queues, proven or not: a quorum queue may ignore acknowledgements that arrive just before
  the channel closes (rabbitmq/rabbitmq-server#10327) and deliver those messages again, although the
  transaction that carried them and the witness committed. A redelivery that matches no record in
  doubt but one of the window before the witness's sequence (`earlier`) is kept and marked a possible
  copy: it may be such a message, or one with the same content that was never archived.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.archive.record import CopyMark, record_fingerprint
from bridge.archive.segment import first_seq_from_name, iter_records
from sinks import ObjectNotFound, Sink


@dataclass
class InDoubt:
    """Records the broker may deliver again, as (sequence, fingerprint) in sequence order."""

    records: list[tuple[int, bytes]] = field(default_factory=list)
    proven: bool = False
    # Quorum queues, proven sessions: the window before the witness's sequence, possibly delivered again.
    earlier: list[tuple[int, bytes]] = field(default_factory=list)


async def read_in_doubt(sink: Sink, segment_keys: Iterable[str], after_seq: int) -> list[tuple[int, bytes]]:
    """The fingerprints of the records after `after_seq` in the given (newest, ordered) segments, one
    per message: a record marked a copy (or a possible one) of another of them is the same message
    archived twice, and the broker delivers it again once. (Expecting it twice could take another
    message with the same content for a copy.)"""
    keys = list(segment_keys)
    firsts = [first_seq_from_name(key) or 0 for key in keys]
    found: list[tuple[int, bytes]] = []
    for i, key in enumerate(keys):
        if i + 1 < len(keys) and firsts[i + 1] <= after_seq + 1:
            continue  # wholly at or before `after_seq`
        try:
            data = await sink.get(key)
        except ObjectNotFound:  # compacted meanwhile (an old hour): its records are not the ones in doubt now
            continue
        for record in iter_records(data, key):
            if record.seq <= after_seq:
                continue
            original = record.copy_of if record.copy_of is not None else record.possible_copy_of
            if original is not None and original > after_seq:
                continue
            found.append((record.seq, record_fingerprint(record)))
    found.sort()
    return found


class CopyMatcher:
    """Classifies one session's redelivered messages by their fingerprints (see the module's docstring)."""

    def __init__(self, in_doubt: InDoubt) -> None:
        self.proven = in_doubt.proven
        self._seqs = [seq for seq, _ in in_doubt.records]
        self._positions: dict[bytes, deque[int]] = defaultdict(deque)
        for position, (_, fp) in enumerate(in_doubt.records):
            self._positions[fp].append(position)
        self._next = 0
        self._earlier: dict[bytes, int] = {fp: seq for seq, fp in in_doubt.earlier}  # the newest of each
        self.open = bool(in_doubt.records or in_doubt.earlier)
        self.copies = 0
        self.possible_copies = 0

    def classify(self, fp: bytes) -> CopyMark | None:
        if not self.open:
            return None
        mark = self._in_doubt(fp)
        if mark is None and fp in self._earlier:
            self.possible_copies += 1
            return CopyMark(self._earlier[fp], proven=False)
        return mark

    def _in_doubt(self, fp: bytes) -> CopyMark | None:
        positions = self._positions.get(fp)
        while positions and positions[0] < self._next:
            positions.popleft()  # passed over: removed by the broker before it came again
        if not positions:
            return None
        position = positions.popleft()
        if self.proven:
            self._next = position + 1
            self.copies += 1
            if self._next >= len(self._seqs) and not self._earlier:
                self.open = False
            return CopyMark(self._seqs[position], proven=True)
        self.possible_copies += 1
        return CopyMark(self._seqs[position], proven=False)

    def first_delivery(self) -> None:
        """A delivery that is not a redelivery arrived: in a proven session no copy can follow it."""
        if self.proven:
            self.open = False
