"""A replay's Prometheus metrics, read from its live per-source outcomes on every scrape, and what
/healthz and /readyz answer for it (replay --follow runs for days during a migration)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.archive.record import Source
from bridge.metrics.endpoint import Health
from bridge.replay.outcome import SourceOutcome
from bridge.replay.progress import Progress


class ReplayMetrics(Collector):
    def __init__(self, outcomes: Mapping[Source, SourceOutcome], progress: Progress) -> None:
        self.outcomes, self.progress = outcomes, progress
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        labels = ["source", "target"]
        replayed = CounterMetricFamily(
            "warren_replay_messages", "Messages the target confirmed (replayed)", labels=labels
        )
        size = CounterMetricFamily("warren_replay_bytes", "Body bytes the target confirmed", labels=labels)
        skipped = CounterMetricFamily(
            "warren_replay_duplicates_skipped", "Records the archive proves copies, not published", labels=labels
        )
        newest = GaugeMetricFamily(
            "warren_replay_newest_record_timestamp_seconds",
            "Capture (or stream chunk) time of the newest record the target confirmed",
            labels=labels,
        )
        failed = GaugeMetricFamily("warren_replay_source_failed", "1 once the source's replay failed", labels=labels)
        for source, outcome in list(self.outcomes.items()):
            key = [str(source), outcome.target]
            replayed.add_metric(key, float(outcome.replayed))
            size.add_metric(key, float(outcome.bytes))
            skipped.add_metric(key, float(outcome.skipped_duplicates))
            failed.add_metric(key, 1.0 if outcome.error else 0.0)
            if outcome.last_ns is not None:
                newest.add_metric(key, outcome.last_ns / 1e9)
        yield from (replayed, size, skipped, newest, failed)
        if self.progress.lag_s is not None:
            yield GaugeMetricFamily(
                "warren_replay_lag_seconds",
                "replay --follow: age of the newest archived record read for replay, as the progress line shows",
                value=self.progress.lag_s,
            )
        if self.progress.total is not None:
            yield GaugeMetricFamily(
                "warren_replay_selected_messages", "Messages the replay was asked to publish", value=self.progress.total
            )

    def liveness(self) -> Health:
        """Healthy unless every source's replay has failed (a follow would otherwise idle on, doing nothing)."""
        outcomes = list(self.outcomes.values())
        if outcomes and all(o.error for o in outcomes):
            return Health(False, "every source failed: " + "; ".join(f"{o.source} ({o.error})" for o in outcomes))
        return Health(True, self.progress.describe())

    def readiness(self) -> Health:
        """Ready while no source's replay has failed."""
        failed = [f"{source} ({o.error})" for source, o in self.outcomes.items() if o.error]
        if failed:
            return Health(False, "failed: " + "; ".join(failed))
        return Health(True, self.progress.describe())
