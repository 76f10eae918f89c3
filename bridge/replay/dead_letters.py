"""`--to-origin`: a dead-letter queue's records back to the queues they died in, as RabbitMQ's x-death
headers name them (3.x and 4.x alike, for AMQP 0-9-1 consumers): `x-first-death-queue`, or the oldest
`x-death` entry; optionally only those that died for given reasons, and without their death history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.archive.record import Record
from bridge.errors import ConfigError
from bridge.replay.outcome import SourceOutcome
from protocol.core.header_table import without_header

REASONS = ("rejected", "expired", "maxlen", "delivery_limit")
DEATH_HEADERS = (
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
)


def parse_reasons(given: Sequence[str]) -> tuple[str, ...]:
    for reason in given:
        if reason not in REASONS:
            raise ConfigError(f"--death-reason {reason}: expected one of {', '.join(REASONS)}")
    return tuple(given)


@dataclass(frozen=True)
class Death:
    queue: str
    reason: str | None


def first_death(headers: dict[str, Any] | None) -> Death | None:
    """Where and why a message first died, from its headers; None if it never was dead-lettered."""
    headers = headers or {}
    queue, reason = headers.get("x-first-death-queue"), headers.get("x-first-death-reason")
    deaths = headers.get("x-death")
    if queue is None and isinstance(deaths, list) and deaths and isinstance(deaths[-1], dict):
        oldest = deaths[-1]  # RabbitMQ keeps the most recent death first
        queue, reason = oldest.get("queue"), oldest.get("reason")
    if not isinstance(queue, str | bytes) or not queue:
        return None
    return Death(_text(queue), _text(reason) if isinstance(reason, str | bytes) else None)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass
class Origins:
    """Routes each record to the queue it first died in (after --map-queue), through the default
    exchange; counts what it sends where, and what it passes over."""

    rename: Callable[[str], str]
    reasons: tuple[str, ...] = ()  # only deaths for these; () for any
    strip: bool = False  # without x-death and the x-first/last-death headers
    sent: Counter[str] = field(default_factory=Counter)

    def route(self, record: Record, outcome: SourceOutcome) -> tuple[str, str, bytes] | None:
        """Exchange, routing key and the property section to publish with; None to pass the record over."""
        death = first_death(record.properties.headers)
        if death is None:
            outcome.not_dead_lettered += 1
            return None
        if self.reasons and death.reason not in self.reasons:
            outcome.other_reasons += 1
            return None
        queue = self.rename(death.queue)
        self.sent[queue] += 1
        outcome.sent_back = dict(self.sent)
        raw = record.raw_properties
        if self.strip:
            for name in DEATH_HEADERS:
                raw = without_header(raw, name)
        return "", queue, raw
