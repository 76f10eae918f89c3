"""What a replay did, per source: the summary an operator reads at the end."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.archive.ledger import Gap
from bridge.archive.record import Source
from bridge.timespec import format_span

GAPS_SHOWN = 5


@dataclass
class SourceOutcome:
    source: Source
    target: str  # where the records went, e.g. "queue 'orders' in vhost '/'"
    replayed: int = 0
    bytes: int = 0
    skipped_duplicates: int = 0  # records the archiver proved copies of earlier ones
    possible_duplicates: int = 0  # replayed records the archiver could not prove copies or not
    superseded: int = 0  # snapshot records of other snapshots than the one restored
    already_confirmed: int = 0  # archive sequence up to which the state file says the target has everything
    in_doubt: int = 0  # published but unconfirmed when a previous run stopped: may now be duplicated
    sent_back: dict[str, int] = field(default_factory=dict)  # --to-origin: records per origin queue
    not_dead_lettered: int = 0  # --to-origin: records without a death to undo, passed over
    other_reasons: int = 0  # --to-origin --death-reason: records that died for another reason, passed over
    first_ns: int | None = None
    last_ns: int | None = None
    corrupt: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)  # the gap ledger's, in the window replayed
    error: str | None = None

    def cover(self, first_ns: int, last_ns: int) -> None:
        """The records replayed include times from `first_ns` to `last_ns`."""
        self.first_ns = first_ns if self.first_ns is None else min(self.first_ns, first_ns)
        self.last_ns = last_ns if self.last_ns is None else max(self.last_ns, last_ns)

    def line(self) -> str:
        span = format_span(self.first_ns, self.last_ns)
        text = (
            f"{'FAILED' if self.error else 'done  '} {self.source} -> {self.target}: {self.replayed} replayed, "
            f"{self.skipped_duplicates} duplicates skipped, covering {span}"
        )
        if self.possible_duplicates:
            text += (
                f"; {self.possible_duplicates} possible duplicates kept (delivered again with the content of an "
                "earlier message, not provably copies)"
            )
        if self.superseded:
            text += f"; {self.superseded} records of other snapshots passed over"
        if self.already_confirmed:
            text += f"; sequences up to {self.already_confirmed} were already confirmed by an earlier run"
        if self.in_doubt:
            text += f"; {self.in_doubt} were in doubt from the interrupted run and were published again"
        if self.sent_back:
            text += "; sent back to " + ", ".join(f"{q!r}: {n}" for q, n in sorted(self.sent_back.items()))
        if self.not_dead_lettered:
            text += f"; {self.not_dead_lettered} never dead-lettered, passed over"
        if self.other_reasons:
            text += f"; {self.other_reasons} dead-lettered for other reasons, passed over"
        if self.gaps:
            lost = sum(g.lost for g in self.gaps)
            text += f"\n       the window crosses {len(self.gaps)} gaps in archiving" + (
                f" (up to {lost} stream messages were lost before they were archived)" if lost else ""
            )
            text += "".join(f"\n       gap: {g.line()}" for g in self.gaps[:GAPS_SHOWN])
            if len(self.gaps) > GAPS_SHOWN:
                text += f"\n       and {len(self.gaps) - GAPS_SHOWN} more (warren inspect --gaps)"
        for c in self.corrupt:
            text += f"\n       skipped corrupt segment {c}"
        if self.error:
            text += f"\n       {self.error}"
        return text
