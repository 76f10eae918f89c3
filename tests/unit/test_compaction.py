"""Compaction of sealed hours: a few large segments instead of many small ones, every record kept in
order and byte for byte, readers right before, during and after, crash-safe and idempotent."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from bridge.archive.reader import TimeRange, list_segments, read_records
from bridge.archive.record import Record, Source, SourceKind
from bridge.archiver.compaction import HOUR_NS, SEAL_AFTER_NS, compact
from bridge.archiver.writer import RollPolicy, SegmentWriter
from bridge.commands.verify import verify_archive
from bridge.replay.selection import plan_sources, records_after
from protocol.core.message import Message
from protocol.loop import run
from sinks import LocalSink

S = 1_000_000_000
T0 = int(dt.datetime(2024, 5, 1, 10, 0, 0, tzinfo=dt.UTC).timestamp()) * S
QUEUE = Source("/", SourceKind.QUEUE, "orders")


class Clock:
    """200 records over each of three hours: 10:00, 11:00 and 12:00 UTC."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        i, self.n = self.n, self.n + 1
        return T0 + (i // 200) * HOUR_NS + (i % 200) * 10 * S


async def archive(root: Path, records: int = 600) -> LocalSink:
    sink = LocalSink(root)
    await sink.check()
    writer = SegmentWriter(sink, QUEUE, policy=RollPolicy(max_records=10, max_age=3600), clock=Clock())
    await writer.start()
    for n in range(records):
        writer.append_message(Message.build(b"body %d" % n, {"message_id": f"m{n}"}, routing_key="orders"))
    await writer.close()
    return sink


async def everything(sink: LocalSink) -> list[tuple[int, bytes, bytes]]:
    return [
        (r.seq, r.body, r.raw_properties)
        for seg in await list_segments(sink, "", QUEUE)
        async for r in read_records(sink, seg)
    ]


def hours_of(keys: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        hour = "/".join(key.split("/")[3:7])
        counts[hour] = counts.get(hour, 0) + 1
    return counts


def sealed_through(hour: int) -> int:
    """A time at which hours 10:00 .. `hour`:00 are sealed and the next is not."""
    return T0 + (hour - 10 + 1) * HOUR_NS + SEAL_AFTER_NS


def test_sealed_hours_become_one_segment_each_with_every_record_in_order(tmp_path):
    async def scenario():
        sink = await archive(tmp_path)
        before = await everything(sink)
        report = await compact(sink, now_ns=sealed_through(11))
        after = await everything(sink)
        keys = [seg.key for seg in await list_segments(sink, "", QUEUE)]
        files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wseg"))
        verified = await verify_archive(sink, out=lambda _: None)
        return before, after, keys, files, report, verified

    before, after, keys, files, report, verified = run(scenario())
    assert after == before and [seq for seq, _, _ in after] == list(range(1, 601))
    assert hours_of(keys) == {"2024/05/01/10": 1, "2024/05/01/11": 1, "2024/05/01/12": 20}  # 12:00 not sealed
    assert len(files) == len(keys)  # the covered segments are gone
    assert (report.hours, report.written, report.removed) == (2, 2, 40)
    assert not any(r.problems for r in verified)


def test_a_second_run_changes_nothing_and_a_dry_run_changes_nothing_either(tmp_path):
    async def scenario():
        sink = await archive(tmp_path)
        dry = await compact(sink, now_ns=sealed_through(12), dry_run=True)
        untouched = len(list(tmp_path.rglob("*.wseg")))
        await compact(sink, now_ns=sealed_through(12))
        again = await compact(sink, now_ns=sealed_through(12))
        return dry, untouched, again, await everything(sink)

    dry, untouched, again, records = run(scenario())
    assert (dry.hours, dry.objects_before, dry.objects_after, untouched) == (3, 60, 3, 60)
    assert (again.hours, again.written, again.removed) == (0, 0, 0)
    assert [seq for seq, _, _ in records] == list(range(1, 601))


class DeletesFail(LocalSink):
    """A compaction that crashes right after writing its compacted segment: no segment is removed."""

    async def delete(self, key: str) -> None:
        raise RuntimeError("crash")


def test_a_crash_between_writing_and_removing_leaves_readers_right_and_a_rerun_finishes(tmp_path):
    async def scenario():
        sink = await archive(tmp_path)
        before = await everything(sink)
        crashing = DeletesFail(tmp_path)
        with contextlib.suppress(RuntimeError):
            await compact(crashing, now_ns=sealed_through(10))
        both = len(list(tmp_path.rglob("*.wseg")))
        during = await everything(sink)  # the compacted segment and the ones it covers are all there
        [verified] = await verify_archive(sink, out=lambda _: None)
        report = await compact(sink, now_ns=sealed_through(10))
        return before, during, both, verified, report, await everything(sink)

    before, during, both, verified, report, after = run(scenario())
    assert both == 61 and during == before
    assert verified.problems == [] and verified.covered == 20
    assert (report.written, report.removed) == (0, 20)  # found the compacted segment; removed what it covers
    assert after == before


def test_a_replay_planned_before_compaction_reads_on_in_the_compacted_segment(tmp_path):
    async def scenario() -> tuple[list[int], list[Record]]:
        sink = await archive(tmp_path)
        [plan] = await plan_sources(sink, [], TimeRange())
        seen: list[Record] = []
        async for _, record in records_after(sink, plan, TimeRange(), 0, skip_corrupt=False):
            seen.append(record)
            if len(seen) == 15:  # part-way through the 10:00 hour: its segments are replaced now
                await compact(sink, now_ns=sealed_through(11))
        return [r.seq for r in seen], plan.corrupt

    seqs, corrupt = run(scenario())
    assert seqs == list(range(1, 601)) and corrupt == []
