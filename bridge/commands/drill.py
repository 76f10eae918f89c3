"""`warren drill`: a restore drill. The archive's last `--window` (or the one ending at `--at`) is
replayed, topology first, into a throwaway private broker, and what arrives is checked against the
archive: per queue, every message (by its fingerprint: where it went, its properties, its body), per
stream the count the target confirmed. A report, a Prometheus textfile for node_exporter, and exit code
0 (restorable) or 1; schedulable with systemd/warren-drill@.timer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from bridge.archive.reader import TimeRange, read_footers
from bridge.archive.record import Source, SourceKind, message_fingerprint, record_fingerprint
from bridge.config import with_vhost
from bridge.errors import EXIT_CHECK_FAILED, EXIT_OK, ArchiveCorrupt, ConfigError
from bridge.harness.scratch import Broker, private_broker
from bridge.replay.selection import plan_sources, records_after
from bridge.replay.service import ReplayOptions, run_replay
from bridge.replay.topology import NoDefinitions
from bridge.timespec import format_time, parse_duration, parse_time
from protocol import connect
from protocol.loop import run
from sinks import Sink, open_sink

EXAMPLES = (
    "examples:\n"
    "  warren drill file:///var/lib/warren --window 5m\n"
    "  warren drill s3://archive-bucket/warren --window 1h --source orders --metrics-file \\\n"
    "               /var/lib/node_exporter/textfile/warren_drill.prom --report /var/lib/warren/drill.json"
)


@dataclass
class SourceDrill:
    source: Source
    expected: int = 0
    restored: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        head = f"{'ok    ' if self.ok else 'FAILED'} {self.source}: {self.restored} of {self.expected} restored"
        return head + ("" if self.ok else "; " + "; ".join(self.problems))

    def to_json(self) -> dict[str, object]:
        return {"source": self.source.to_map(), "expected": self.expected, "restored": self.restored,
                "ok": self.ok, "problems": self.problems}  # fmt: skip


@dataclass
class DrillReport:
    archive: str
    since_ns: int
    until_ns: int
    sources: list[SourceDrill] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.sources) and all(s.ok for s in self.sources)

    def lines(self) -> list[str]:
        window = f"{format_time(self.since_ns)} .. {format_time(self.until_ns)}"
        out = [f"restore drill of {self.archive}, window {window}"]
        out += [s.line() for s in self.sources]
        if self.error:
            out.append(f"FAILED {self.error}")
        elif not self.sources:
            out.append("FAILED the window holds no record to restore")
        out.append("restorable" if self.ok else "NOT restorable as archived")
        return out

    def metrics(self) -> str:
        """Prometheus text format, for node_exporter's textfile collector."""
        lines = [
            "# HELP warren_drill_success 1 if the last restore drill restored the window as archived.",
            "# TYPE warren_drill_success gauge",
            f"warren_drill_success {int(self.ok)}",
            "# HELP warren_drill_last_run_timestamp_seconds When the last restore drill ran.",
            "# TYPE warren_drill_last_run_timestamp_seconds gauge",
            f"warren_drill_last_run_timestamp_seconds {time.time():.0f}",
            "# HELP warren_drill_restored_messages Messages the last drill restored, per source.",
            "# TYPE warren_drill_restored_messages gauge",
        ]
        for s in self.sources:
            labels = f'vhost="{_label(s.source.vhost)}",source="{_label(s.source.name)}",kind="{s.source.kind}"'
            lines.append(f"warren_drill_restored_messages{{{labels}}} {s.restored}")
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def expected_content(
    sink: Sink, window: TimeRange, names: list[str]
) -> tuple[dict[Source, Counter[bytes]], dict[Source, str]]:
    """Per source, the fingerprints of the records a replay of the window publishes (proven copies not);
    and the sources whose segments are damaged, with the damage."""
    found: dict[Source, Counter[bytes]] = {}
    damaged: dict[Source, str] = {}
    for plan in await plan_sources(sink, names, window):
        counts = found.setdefault(plan.source, Counter())
        try:
            async for _, record in records_after(sink, plan, window, 0, skip_corrupt=False):
                if record.copy_of is None:
                    counts[record_fingerprint(record)] += 1
        except ArchiveCorrupt as err:
            damaged[plan.source] = str(err)
    return {source: counts for source, counts in found.items() if counts or source in damaged}, damaged


async def window_end(sink: Sink, names: list[str]) -> int | None:
    ends = [i.max_time_ns for i in await read_footers(sink) if not names or i.source.name in names]
    return max(ends, default=None)


async def drained(uri: str, queue: str) -> Counter[bytes]:
    """The fingerprints of every message in `queue` (the replay has finished: it is all there)."""
    conn = await connect(uri, name="warren drill")
    try:
        channel = await conn.channel()
        got: Counter[bytes] = Counter()
        while (message := await asyncio.wait_for(channel.get(queue, no_ack=True), 30)) is not None:
            got[message_fingerprint(message)] += 1
        return got
    finally:
        await conn.close()


async def drill(
    archive: str, window_ns: int, *, at_ns: int | None, names: list[str], target: Broker | None
) -> DrillReport:
    async with open_sink(archive) as sink:
        end = at_ns if at_ns is not None else await window_end(sink, names)
        if end is None:
            return DrillReport(archive, 0, 0, error="the archive holds no record to restore")
        window = TimeRange(end - window_ns, end)
        report = DrillReport(archive, end - window_ns, end)
        expected, damaged = await expected_content(sink, window, names)
    async with private_broker("drill", target, announce=False) as broker:
        options = ReplayOptions(
            archive,
            broker.amqp_uri,
            since_ns=window.since_ns,
            until_ns=window.until_ns,
            sources=tuple(names),
            definitions=True,
            target_management_uri=broker.management_uri,
        )
        try:
            outcomes = await run_replay(options, raise_on_failure=False)
        except NoDefinitions:
            await _declare(broker.amqp_uri, expected)
            outcomes = await run_replay(replace(options, definitions=False), raise_on_failure=False)
        by_source = {o.source: o for o in outcomes}
        for source, want in sorted(expected.items()):
            result = SourceDrill(source, expected=sum(want.values()))
            outcome = by_source.get(source)
            if source in damaged:
                result.problems.append(f"archive damaged: {damaged[source]}")
            elif outcome is None or outcome.error:
                result.problems.append(f"replay failed: {outcome.error if outcome else 'not replayed'}")
            elif source.kind is SourceKind.QUEUE:
                got = await drained(with_vhost(broker.amqp_uri, source.vhost), source.name)
                result.restored = sum(got.values())
                if got != want:
                    missing, surplus = sum((want - got).values()), sum((got - want).values())
                    result.problems.append(f"{missing} messages missing or changed, {surplus} not in the archive")
            else:
                result.restored = outcome.replayed  # confirmed by the target, deduplicated by publishing id
                if result.restored != result.expected:
                    result.problems.append(f"the target confirmed {result.restored}")
            report.sources.append(result)
    return report


async def _declare(uri: str, expected: dict[Source, Counter[bytes]]) -> None:
    """Without saved definitions: each queue as a durable classic queue, each stream as a stream."""
    for source in expected:
        conn = await connect(with_vhost(uri, source.vhost), name="warren drill")
        try:
            channel = await conn.channel()
            arguments = {"x-queue-type": "stream"} if source.kind is SourceKind.STREAM else None
            await channel.queue_declare(source.name, durable=True, arguments=arguments)
        finally:
            await conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("archive", metavar="ARCHIVE", help="archive URI (file:///var/lib/warren, s3://...) or path")
    parser.add_argument("--window", metavar="AGE", default="5m", help="how much to restore: 5m, 1h (default 5m)")
    parser.add_argument("--at", metavar="T", help="the window ends at T (default: the archive's newest record)")
    parser.add_argument("--source", metavar="NAME", action="append", default=[], help="only this queue or stream")
    parser.add_argument("--report", metavar="FILE", help="also write the report there, as JSON")
    parser.add_argument("--metrics-file", metavar="FILE", help="a Prometheus textfile (node_exporter) to write")


def from_args(args: argparse.Namespace) -> int:
    window = parse_duration(args.window, what="--window")
    if window <= 0:
        raise ConfigError(f"--window {args.window}: expected a positive age")
    at = parse_time(args.at, what="--at") if args.at else None
    report = run(drill(args.archive, window, at_ns=at, names=list(args.source), target=None))
    for line in report.lines():
        print(line)
    if args.report:
        _write(Path(args.report), json.dumps(
            {"archive": report.archive, "since": format_time(report.since_ns), "until": format_time(report.until_ns),
             "ok": report.ok, "error": report.error, "sources": [s.to_json() for s in report.sources]}, indent=2,
        ) + "\n")  # fmt: skip
    if args.metrics_file:
        _write(Path(args.metrics_file), report.metrics())
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def _write(path: Path, text: str) -> None:
    """Whole or not at all: the textfile collector must never read half a file."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)
