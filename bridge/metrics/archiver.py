"""The archiver's Prometheus metrics, and what /healthz and /readyz answer for it.

Counters and histograms are fed as segments become durable (once a segment, never per message); the
state of the sources and writers is read when Prometheus scrapes (`_LiveState`), so nothing is kept
twice. Every series is labelled with the source's display name ("queue 'x' in vhost '/'").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.archiver.ledger import LedgerNotes
from bridge.archiver.status import SourceStates
from bridge.archiver.writer import SegmentWriter
from bridge.metrics.endpoint import Health
from bridge.metrics.sink_timing import SinkMetrics

disable_created_metrics()  # a *_created series beside every counter says nothing an operator asks

# From a segment's first message to its acknowledgement: tens of milliseconds when the window drives
# the roll, up to segment-max-age on a quiet source.
ACK_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ArchivedSource(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def writer(self) -> SegmentWriter: ...

    @property
    def ledger(self) -> LedgerNotes: ...


class ArchiverMetrics:
    """One registry per archiver run (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "warren_archived_messages",
            "Messages made durable in the archive (and so acknowledged)",
            ["source"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "warren_archived_bytes",
            "Segment bytes made durable, as stored (compressed)",
            ["source"],
            registry=self.registry,
        )
        self.segments = Counter(
            "warren_segments_committed", "Segments made durable in the archive", ["source"], registry=self.registry
        )
        self.ack_latency = Histogram(
            "warren_ack_latency_seconds",
            "From the first message of a segment arriving to its acknowledgement (the segment durable)",
            ["source"],
            buckets=ACK_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sinks = SinkMetrics(self.registry)
        self.backlog: dict[str, int] = {}  # source -> messages in its queue not yet archived (management API)

    def for_source(self, source: str) -> SegmentCounters:
        return SegmentCounters(
            self.messages.labels(source),
            self.bytes.labels(source),
            self.segments.labels(source),
            self.ack_latency.labels(source),
        )

    def watch(self, sources: Sequence[ArchivedSource], states: SourceStates) -> None:
        """Report the sources' live state on every scrape."""
        self.registry.register(_LiveState(sources, states, self.backlog))


@dataclass(frozen=True)
class SegmentCounters:
    """A writer's CommitObserver: the source's series, labelled once."""

    messages: Counter
    bytes: Counter
    segments: Counter
    ack_latency: Histogram

    def segment_durable(self, records: int, size: int, waited: float) -> None:
        self.messages.inc(records)
        self.bytes.inc(size)
        self.segments.inc()
        self.ack_latency.observe(waited)


class _LiveState(Collector):
    def __init__(self, sources: Sequence[ArchivedSource], states: SourceStates, backlog: dict[str, int]) -> None:
        self.sources, self.states, self.backlog = sources, states, backlog

    def collect(self) -> Iterator[Metric]:
        consuming = GaugeMetricFamily(
            "warren_source_consuming", "1 while the source is connected and consuming", labels=["source"]
        )
        failures = GaugeMetricFamily(
            "warren_source_failures", "Times the source's connection failed or was refused", labels=["source"]
        )
        committed = GaugeMetricFamily(
            "warren_committed_sequence", "The last record sequence durable in the archive", labels=["source"]
        )
        failing = GaugeMetricFamily(
            "warren_sink_failing_seconds",
            "How long the sink has refused this source's writes, or left one pending past 5 s (0 while it takes them)",
            labels=["source"],
        )
        interruptions = GaugeMetricFamily(
            "warren_source_interruptions",
            "Times archiving of the source stopped on an error since start, as noted in the gap ledger",
            labels=["source"],
        )
        skipped = GaugeMetricFamily(
            "warren_stream_offsets_skipped",
            "Stream offsets removed by the stream's retention before they were archived, since start (messages lost)",
            labels=["source"],
        )
        backlog = GaugeMetricFamily(
            "warren_source_backlog_messages",
            "Messages in the queue not yet archived, as the broker's management API reports them",
            labels=["source"],
        )
        for source in self.sources:
            name, writer = source.name, source.writer
            consuming.add_metric([name], 1.0 if self.states.is_consuming(name) else 0.0)
            failures.add_metric([name], float(self.states.failures.get(name, 0)))
            committed.add_metric([name], float(writer.committed_seq))
            trouble = writer.sink_trouble()
            failing.add_metric([name], 0.0 if trouble is None else trouble[0])
            interruptions.add_metric([name], float(source.ledger.interruptions))
            skipped.add_metric([name], float(source.ledger.offsets_skipped))
            if name in self.backlog:
                backlog.add_metric([name], float(self.backlog[name]))
        yield from (consuming, failures, committed, failing, interruptions, skipped, backlog)


def liveness(states: SourceStates) -> Health:
    """Healthy while no source has stopped for good (a restart is what would bring it back)."""
    broken = states.stopped_for_good()
    if broken:
        return Health(False, "stopped for good: " + "; ".join(f"{n} ({why})" for n, why in sorted(broken.items())))
    return Health(True, states.line())


def readiness(sources: Sequence[ArchivedSource], states: SourceStates) -> Health:
    """Ready while at least one source consumes and the sink takes every source's writes (for
    mirrored sinks: the write quorum holds)."""
    troubles = [(s.name, s.writer.sink_trouble()) for s in sources]
    refused = [f"{name} ({trouble[1]})" for name, trouble in troubles if trouble is not None]
    if refused:
        return Health(False, "the sink is not taking writes: " + "; ".join(refused))
    if not any(states.is_consuming(s.name) for s in sources):
        return Health(False, "no source consuming: " + states.line())
    return Health(True, states.line())
