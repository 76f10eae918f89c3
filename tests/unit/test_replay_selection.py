"""What a replay selects, on an archive written by warren's own writer: the count it announces is the
count it replays (a window, an earlier run's progress, copies and other snapshots left out), and the
snapshot it restores is the latest complete one by the time asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.archive.reader import TimeRange
from bridge.archive.record import CopyMark, Source, SourceKind
from bridge.archive.snapshots import SnapshotRun, chosen_snapshot, record_snapshot
from bridge.archiver.writer import RollPolicy, SegmentWriter
from bridge.commands.ls import summarize
from bridge.replay.selection import count_selected, dry_run, plan_sources, records_after
from protocol.core.message import Message
from protocol.loop import run
from sinks import LocalSink

S = 1_000_000_000
T0 = 1_714_557_600 * S  # 2024-05-01T10:00:00Z
QUEUE = Source("/", SourceKind.QUEUE, "orders")


class Clock:
    def __init__(self) -> None:
        self.now_ns = T0

    def __call__(self) -> int:
        self.now_ns += S  # one record a second
        return self.now_ns


def message(n: int) -> Message:
    return Message.build(b"body %d" % n, {"message_id": f"m{n}"}, routing_key="orders")


async def archive(root: Path, records: list[tuple[int, CopyMark | None, int | None]]) -> LocalSink:
    """One record a second from T0 + 1 s, in segments of 7: (message number, copy mark, snapshot id)."""
    sink = LocalSink(root)
    await sink.check()
    writer = SegmentWriter(sink, QUEUE, policy=RollPolicy(max_records=7, max_age=3600), clock=Clock())
    await writer.start()
    for n, mark, snapshot in records:
        writer.append_message(message(n), mark=mark, snapshot=snapshot)
    await writer.close()
    return sink


async def replayed(sink: LocalSink, window: TimeRange, after_seq: int = 0) -> tuple[int, list[int]]:
    """(the count announced, the message numbers the replay would publish) of the one source."""
    [plan] = await plan_sources(sink, [], window)
    announced = await count_selected(sink, plan, window, after_seq)
    published = [
        int(record.properties.message_id[1:])
        async for _, record in records_after(sink, plan, window, after_seq, skip_corrupt=False)
        if record.copy_of is None
    ]
    return announced, published


@pytest.mark.parametrize(
    ("since", "until", "after_seq"),
    [(None, None, 0), (None, 20, 0), (10, None, 0), (9, 33, 0), (None, None, 12), (5, 30, 17), (40, None, 0)],
)
def test_the_count_announced_is_the_count_replayed(tmp_path, since, until, after_seq):
    copies = {12: CopyMark(3, True), 13: CopyMark(4, True), 30: CopyMark(29, False)}
    records = [(n, copies.get(n), None) for n in range(1, 41)]
    window = TimeRange(T0 + since * S if since else None, T0 + until * S if until else None)

    async def scenario() -> tuple[int, list[int]]:
        return await replayed(await archive(tmp_path, records), window, after_seq)

    announced, published = run(scenario())
    lo, hi = since or 1, until or 40
    expected = [n for n in range(max(lo, after_seq + 1), hi + 1) if n not in (12, 13)]
    assert published == expected
    assert announced == len(expected)


def test_dry_run_counts_skipped_copies_and_possible_ones(tmp_path):
    records = [(n, {5: CopyMark(2, True), 6: CopyMark(1, False)}.get(n), None) for n in range(1, 11)]

    async def scenario():
        sink = await archive(tmp_path, records)
        [plan] = await plan_sources(sink, [], TimeRange())
        return await dry_run(sink, plan, TimeRange(), 0), await dry_run(sink, plan, TimeRange(), 0, keep_copies=True)

    summary, keeping = run(scenario())
    assert (summary.records, summary.copies, summary.possible_copies) == (9, 1, 1)
    assert (keeping.records, keeping.copies) == (10, 0)


def test_a_queue_archived_by_snapshots_is_restored_as_the_latest_complete_snapshot(tmp_path):
    first, second, unfinished = T0 + 1, T0 + 2, T0 + 3
    records = [(n, None, first) for n in range(1, 6)] + [(n, None, second) for n in range(2, 7)]
    records += [(n, None, unfinished) for n in range(2, 4)]

    async def scenario():
        sink = await archive(tmp_path, records)
        await record_snapshot(sink, "", QUEUE, SnapshotRun(first, 1, 5, 5, T0 + 5 * S))
        await record_snapshot(sink, "", QUEUE, SnapshotRun(second, 6, 10, 5, T0 + 10 * S))
        return (
            await replayed(sink, TimeRange()),
            await replayed(sink, TimeRange(None, T0 + 7 * S)),
            await replayed(sink, TimeRange(None, T0 + 2 * S)),
        )

    latest, by_seven, by_two = run(scenario())
    assert latest == (5, [2, 3, 4, 5, 6])  # the second snapshot; the third never completed
    assert by_seven == (5, [1, 2, 3, 4, 5])  # the second was not complete yet at T0 + 7 s
    assert by_two == (0, [])  # no snapshot had completed yet


def test_the_snapshot_chosen_for_a_window_began_in_it_and_completed_by_its_end():
    runs = [SnapshotRun(10, 1, 1, 1, 15), SnapshotRun(20, 2, 2, 1, 25), SnapshotRun(30, 3, 3, 1, 35)]
    assert chosen_snapshot(runs, None, None) == runs[2]
    assert chosen_snapshot(runs, None, 34) == runs[1]
    assert chosen_snapshot(runs, 11, 26) == runs[1]
    assert chosen_snapshot(runs, 21, 26) is None


def test_ls_counts_the_copies_and_possible_copies_of_each_source(tmp_path):
    marks = {4: CopyMark(1, True), 9: CopyMark(2, True), 12: CopyMark(3, False)}

    async def scenario():
        sink = await archive(tmp_path, [(n, marks.get(n), None) for n in range(1, 16)])
        return await summarize(sink)

    [listed] = run(scenario())
    assert (listed.records, listed.copies, listed.possible_copies) == (15, 2, 1)
    assert listed.to_json()["copies"] == 2 and listed.to_json()["possible_copies"] == 1
