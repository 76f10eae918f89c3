"""The rolling segment writer: rolls by size, by age and at every UTC hour, reports each segment durable once
and in order, commits a checkpoint, recovers where the archive ends, and survives or stops on sink faults."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.archive import layout
from bridge.archive.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from bridge.archive.reader import list_segments, read_index, read_records
from bridge.archive.record import Record, Source, SourceKind
from bridge.archiver.writer import ArchiveWriteFailed, Durable, RollPolicy, SegmentWriter
from protocol.core.message import Message
from protocol.loop import run
from sinks import LocalSink, SinkPermissionDenied, SinkUnavailable
from tests.polling import eventually, stays

HOUR_NS = 3600 * 1_000_000_000
S = 1_000_000_000
QUEUE = Source("/", SourceKind.QUEUE, "orders")
FAST_RETRIES = {"retry_base": 0.01, "retry_max": 0.01}
BIG = RollPolicy(max_bytes=1 << 30, max_age=3600)
T0 = int(dt.datetime(2024, 5, 1, 10, 59, 50, tzinfo=dt.UTC).timestamp()) * S


class FakeClock:
    """Capture times chosen by the test; the writer reads it for every record and checkpoint."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


class FlakySink(LocalSink):
    """A real local sink whose next `failures` puts of archive objects raise `error` (transient by default)."""

    def __init__(self, root: Path, failures: int = 0, error: type[Exception] = SinkUnavailable) -> None:
        super().__init__(root)
        self.failures = failures
        self.error = error
        self.puts = 0

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        if not key.startswith("_warren/"):
            self.puts += 1
            if self.failures > 0:
                self.failures -= 1
                raise self.error("injected fault", sink=self.url, key=key)
        await super().put(key, data, if_absent=if_absent)


class LostReplySink(LocalSink):
    """A real local sink whose first segment put lands, but whose reply is lost: the writer must retry."""

    lost = False

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        await super().put(key, data, if_absent=if_absent)
        if key.endswith(".wseg") and not self.lost:
            self.lost = True
            raise SinkUnavailable("connection reset after the upload", sink=self.url, key=key)


async def open_sink(root: Path, cls: type[LocalSink] = LocalSink, **kwargs: Any) -> LocalSink:
    sink = cls(root, **kwargs)
    await sink.check()
    return sink


def msg(n: int, size: int = 10) -> Message:
    """Message `n`, with a body that does not compress, so segment sizes are predictable."""
    return Message.build(random.Random(n).randbytes(size), {"message_id": f"m{n}"}, routing_key="r")


async def segments_and_records(sink: LocalSink, source: Source = QUEUE) -> list[tuple[layout.SegmentKey, list[Record]]]:
    found = []
    for seg in await list_segments(sink, "", source):
        found.append((seg, [record async for record in read_records(sink, seg)]))
    return found


def test_rolls_by_size_into_segments_near_max_bytes(tmp_path):
    policy = RollPolicy(max_bytes=2000, block_bytes=400, max_age=3600)

    async def scenario() -> list[tuple[layout.SegmentKey, list[Record]]]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, QUEUE, policy=policy, **FAST_RETRIES)
        await writer.start()
        for n in range(1, 51):
            writer.append_message(msg(n, 100))
        await writer.close()
        return await segments_and_records(sink)

    found = run(scenario())
    assert len(found) >= 3
    assert [r.seq for _, records in found for r in records] == list(range(1, 51))
    sizes = [(tmp_path / seg.key).stat().st_size for seg, _ in found]
    # each record is ~130 bytes raw; a segment rolls as soon as it reaches max_bytes, so it overshoots by
    # at most one record and the footer, and compression only makes it smaller
    assert all(size <= policy.max_bytes + 600 for size in sizes)
    for _, records in found[:-1]:
        assert 8 <= len(records) <= 16


def test_rolls_by_age_without_further_appends(tmp_path):
    durable: list[Durable] = []

    async def scenario() -> None:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(
            sink,
            QUEUE,
            policy=RollPolicy(max_age=0.2),
            on_durable=durable.append,
            **FAST_RETRIES,
        )
        await writer.start()
        writer.append_message(msg(1), token="t1")
        writer.append_message(msg(2), token="t2")
        await eventually(lambda: durable, "the first segment durable")
        assert [(d.first_seq, d.last_seq, d.last_token) for d in durable] == [(1, 2, "t2")]
        writer.append_message(msg(3), token="t3")
        await eventually(lambda: len(durable) == 2, "the second segment durable")
        assert (durable[1].first_seq, durable[1].last_seq, durable[1].last_token) == (3, 3, "t3")
        await writer.close()

    run(scenario())
    assert len(durable) == 2


def test_a_segment_never_spans_two_utc_hours(tmp_path):
    clock = FakeClock(T0)
    times = [T0 + k * S for k in range(0, 20)]  # 10:59:50 .. 11:00:09
    times += [T0 + HOUR_NS + k * 7 * S for k in range(0, 5)]  # 11:59:50 .. 12:00:18
    times += [T0 + 3 * HOUR_NS]  # a quiet hour in between: 13:59:50

    async def scenario() -> list[tuple[layout.SegmentKey, list[Record]]]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, QUEUE, policy=BIG, clock=clock, **FAST_RETRIES)
        await writer.start()
        for n, t in enumerate(times, 1):
            clock.now_ns = t
            writer.append_message(msg(n))
        await writer.close()
        return await segments_and_records(sink)

    found = run(scenario())
    assert [r.captured_ns for _, records in found for r in records] == times
    assert [len(records) for _, records in found] == [10, 12, 3, 1]  # 10h, 11h, 12h, 13h
    for seg, records in found:
        hours = {r.captured_ns // HOUR_NS for r in records}
        assert len(hours) == 1, seg.key
        assert seg.hour_ns == hours.pop() * HOUR_NS, seg.key
        assert f"/{layout.partition(records[0].captured_ns)}/" in seg.key


def test_a_segment_captured_in_the_last_nanosecond_of_an_hour_is_filed_under_that_hour(tmp_path):
    boundary = T0 + 10 * S  # 11:00:00
    clock = FakeClock(boundary - 1)

    async def scenario() -> list[tuple[layout.SegmentKey, list[Record]]]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, QUEUE, policy=BIG, clock=clock, **FAST_RETRIES)
        await writer.start()
        writer.append_message(msg(1))
        clock.now_ns = boundary
        writer.append_message(msg(2))
        await writer.close()
        return await segments_and_records(sink)

    found = run(scenario())
    assert [len(records) for _, records in found] == [1, 1]
    for seg, records in found:
        assert seg.hour_ns == records[0].captured_ns // HOUR_NS * HOUR_NS, seg.key


def test_durable_is_reported_once_per_segment_in_order_with_the_last_token(tmp_path):
    durable: list[Durable] = []
    clock = FakeClock(T0)

    async def scenario() -> list[tuple[layout.SegmentKey, list[Record]]]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(
            sink,
            QUEUE,
            policy=RollPolicy(max_bytes=600, block_bytes=200, max_age=3600),
            on_durable=durable.append,
            clock=clock,
            **FAST_RETRIES,
        )
        await writer.start()
        for n in range(1, 41):
            clock.now_ns = T0 + n * S  # crosses 11:00 as well
            writer.append_message(msg(n, 60), token=("delivery", n))
        await writer.close()
        return await segments_and_records(sink)

    found = run(scenario())
    assert len(found) > 3
    assert len(durable) == len(found)
    for d, (seg, records) in zip(durable, found, strict=True):
        assert d.source == QUEUE
        assert d.key == seg.key
        assert (d.first_seq, d.last_seq, d.records) == (records[0].seq, records[-1].seq, len(records))
        assert d.last_token == ("delivery", records[-1].seq)
    assert [d.first_seq for d in durable] == [1] + [d.last_seq + 1 for d in durable[:-1]]


def test_close_commits_a_checkpoint_of_the_last_sequence(tmp_path):
    async def scenario() -> tuple[Checkpoint | None, list[layout.SegmentKey]]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, QUEUE, policy=RollPolicy(max_bytes=500), **FAST_RETRIES)
        await writer.start()
        for n in range(1, 21):
            writer.append_message(msg(n, 50))
        await writer.close()
        assert writer.committed_seq == 20
        return await read_checkpoint(sink, "", QUEUE), await list_segments(sink)

    checkpoint, segments = run(scenario())
    assert checkpoint is not None
    assert checkpoint.last_seq == 20
    assert checkpoint.last_segment == segments[-1].key


def test_a_stream_checkpoint_keeps_the_last_offset(tmp_path):
    stream = Source("/", SourceKind.STREAM, "events")

    async def scenario() -> Checkpoint | None:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, stream, **FAST_RETRIES)
        await writer.start()
        for offset in range(100, 110):
            writer.append_stream(b"amqp 1.0 bytes", offset, 1_714_557_600_000)
        await writer.close()
        return await read_checkpoint(sink, "", stream)

    checkpoint = run(scenario())
    assert checkpoint is not None
    assert (checkpoint.last_seq, checkpoint.last_offset) == (10, 109)


async def write_batches(sink: LocalSink, batches: int, per_batch: int) -> None:
    """`batches` segments of `per_batch` records each, by one writer."""
    writer = SegmentWriter(sink, QUEUE, policy=BIG, **FAST_RETRIES)
    await writer.start()
    for _ in range(batches):
        for _ in range(per_batch):
            writer.append_message(msg(writer.next_seq))
        await writer.flush()
    await writer.close()


async def restart_and_append(sink: LocalSink) -> tuple[int, int]:
    """A new writer on the same sink: where it resumes, and the sequence its first record gets."""
    writer = SegmentWriter(sink, QUEUE, policy=BIG, **FAST_RETRIES)
    await writer.start()
    resumed_at = writer.next_seq
    seq = writer.append_message(msg(0))
    await writer.close()
    return resumed_at, seq


def test_a_restarted_writer_continues_after_the_last_sequence(tmp_path):
    async def scenario() -> tuple[tuple[int, int], list[int]]:
        sink = await open_sink(tmp_path)
        await write_batches(sink, 3, 4)
        resumed = await restart_and_append(sink)
        seqs = [r.seq for _, records in await segments_and_records(sink) for r in records]
        return resumed, seqs

    resumed, seqs = run(scenario())
    assert resumed == (13, 13)
    assert seqs == list(range(1, 14))


@pytest.mark.parametrize("lag", ["deleted", "older"])
def test_a_restarted_writer_finds_segments_after_a_lagging_checkpoint(tmp_path, lag):
    async def scenario() -> tuple[tuple[int, int], list[int], Checkpoint | None]:
        sink = await open_sink(tmp_path)
        await write_batches(sink, 3, 4)
        key = layout.checkpoint_key("", QUEUE)
        if lag == "deleted":
            await sink.delete(key)
        else:  # a crash after the first segment's checkpoint, before the later ones'
            first = (await list_segments(sink))[0]
            await write_checkpoint(sink, "", QUEUE, Checkpoint(4, None, first.key, T0, T0))
        resumed = await restart_and_append(sink)
        seqs = [r.seq for _, records in await segments_and_records(sink) for r in records]
        return resumed, seqs, await read_checkpoint(sink, "", QUEUE)

    resumed, seqs, checkpoint = run(scenario())
    assert resumed == (13, 13)
    assert seqs == list(range(1, 14))
    assert checkpoint is not None
    assert checkpoint.last_seq == 13


def test_a_retried_upload_of_an_identical_segment_is_accepted(tmp_path):
    durable: list[Durable] = []

    async def scenario() -> LostReplySink:
        sink = await open_sink(tmp_path, LostReplySink)
        writer = SegmentWriter(sink, QUEUE, on_durable=durable.append, **FAST_RETRIES)
        await writer.start()
        for n in range(1, 6):
            writer.append_message(msg(n))
        await writer.close()
        return sink

    sink = run(scenario())
    assert sink.lost  # the first upload's reply was lost, and the retry found the object already there
    assert [(d.first_seq, d.last_seq) for d in durable] == [(1, 5)]
    assert [r.seq for _, records in run(segments_and_records(sink)) for r in records] == [1, 2, 3, 4, 5]


def test_a_different_object_under_the_same_key_fails_the_writer(tmp_path):
    durable: list[Durable] = []
    clock = FakeClock(T0)
    key = layout.segment_key("", QUEUE, 1, T0)

    async def scenario() -> bytes:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, QUEUE, on_durable=durable.append, clock=clock, **FAST_RETRIES)
        await writer.start()
        await sink.put(key, b"another archiver's segment")  # written by someone else since our start
        writer.append_message(msg(1))
        with pytest.raises(ArchiveWriteFailed, match="already exists with other content"):
            await writer.flush()
        with pytest.raises(ArchiveWriteFailed):
            writer.append_message(msg(2))
        with pytest.raises(ArchiveWriteFailed):  # close() reports the failure too
            await writer.close()
        return await sink.get(key)

    assert run(scenario()) == b"another archiver's segment"  # never overwritten
    assert durable == []


def test_transient_sink_failures_are_retried_until_the_data_is_durable(tmp_path):
    durable: list[Durable] = []

    async def scenario() -> tuple[FlakySink, list[int], Checkpoint | None]:
        sink = await open_sink(tmp_path, FlakySink)
        sink.failures = 3
        writer = SegmentWriter(sink, QUEUE, on_durable=durable.append, **FAST_RETRIES)
        await writer.start()
        for n in range(1, 6):
            writer.append_message(msg(n))
        await writer.close()
        seqs = [r.seq for _, records in await segments_and_records(sink) for r in records]
        return sink, seqs, await read_checkpoint(sink, "", QUEUE)

    sink, seqs, checkpoint = run(scenario())
    assert sink.failures == 0
    assert sink.puts == 5  # three failed, then the segment and its checkpoint
    assert seqs == [1, 2, 3, 4, 5]
    assert checkpoint is not None
    assert checkpoint.last_seq == 5
    assert [(d.first_seq, d.last_seq) for d in durable] == [(1, 5)]


def test_a_sink_that_stays_unavailable_fails_the_writer_after_its_retries(tmp_path):
    async def scenario() -> None:
        sink = await open_sink(tmp_path, FlakySink, failures=100)
        writer = SegmentWriter(sink, QUEUE, retry_base=0.01, retry_max=0.01, max_attempts=3)
        await writer.start()
        writer.append_message(msg(1))
        with pytest.raises(ArchiveWriteFailed, match="injected fault"):
            await writer.flush()
        assert sink.puts == 3
        with pytest.raises(ArchiveWriteFailed):  # close() reports the failure too
            await writer.close()

    run(scenario())


def test_a_permanent_sink_error_stops_the_writer_and_nothing_after_it_is_durable(tmp_path):
    durable: list[Durable] = []

    async def scenario() -> tuple[FlakySink, SegmentWriter]:
        sink = await open_sink(tmp_path, FlakySink, error=SinkPermissionDenied)
        writer = SegmentWriter(sink, QUEUE, policy=BIG, on_durable=durable.append, **FAST_RETRIES)
        await writer.start()
        writer.append_message(msg(1))
        await writer.flush()
        sink.failures = 1  # the next put is refused for good: not retried
        for n in (2, 3):
            writer.append_message(msg(n))
            writer.roll()
        writer.append_message(msg(4))
        with pytest.raises(ArchiveWriteFailed, match="injected fault"):
            await writer.flush()
        with pytest.raises(ArchiveWriteFailed):
            writer.append_message(msg(5))
        with pytest.raises(ArchiveWriteFailed):  # close() reports the failure too
            await writer.close()
        return sink, writer

    sink, writer = run(scenario())
    assert [(d.first_seq, d.last_seq) for d in durable] == [(1, 1)]
    assert writer.committed_seq == 1
    # segment 1 and its checkpoint, then one attempt at the refused segment 2 and at most one at each of
    # those uploading alongside it (3 and 4, cancelled once 2 failed): none retried, none reported durable
    assert 2 + 1 <= sink.puts <= 2 + 3
    checkpoint = run(read_checkpoint(sink, "", QUEUE))
    assert checkpoint is not None
    assert checkpoint.last_seq == 1


def test_close_raises_when_an_earlier_upload_already_failed(tmp_path):
    async def scenario() -> None:
        sink = await open_sink(tmp_path, FlakySink, failures=1, error=SinkPermissionDenied)
        writer = SegmentWriter(sink, QUEUE, policy=RollPolicy(max_age=0.1), **FAST_RETRIES)
        await writer.start()
        writer.append_message(msg(1))
        await eventually(lambda: writer.error is not None, "the by-age upload refused")
        with pytest.raises(ArchiveWriteFailed):
            await writer.close()

    run(scenario())


def test_a_queue_with_a_30_character_japanese_name_can_be_archived_on_a_local_sink(tmp_path):
    source = Source("/", SourceKind.QUEUE, "注文" * 15)

    async def scenario() -> list[int]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, source, **FAST_RETRIES)
        await writer.start()
        writer.append_message(msg(1))
        await writer.close()
        return [r.seq for _, records in await segments_and_records(sink, source) for r in records]

    assert run(scenario()) == [1]


def test_recovery_reads_the_stream_offset_from_segments_after_the_checkpoint(tmp_path):
    stream = Source("/", SourceKind.STREAM, "events")

    async def scenario() -> tuple[int, int | None]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, stream, **FAST_RETRIES)
        await writer.start()
        for offset in range(500, 505):
            writer.append_stream(b"x", offset, 1_714_557_600_000)
        await writer.close()
        await sink.delete(layout.checkpoint_key("", stream))
        again = SegmentWriter(sink, stream, **FAST_RETRIES)
        await again.recover()
        (seg,) = await list_segments(sink, "", stream)
        assert (await read_index(sink, seg)).last_offset == 504
        return again.next_seq, again.committed_offset

    assert run(scenario()) == (6, 504)


def test_recovery_removes_segments_uploaded_after_one_that_never_completed(tmp_path):
    # Uploads run several at once but are made known (and acknowledged) in order: if the process dies
    # while segment 2 is still uploading and 3 has landed, 3's messages were never acknowledged, and
    # keeping it would leave a gap in the sequence once they are archived again.
    async def scenario() -> tuple[list[int], int, list[int]]:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(sink, QUEUE, policy=BIG)
        await writer.start()
        for n in (1, 2, 3):
            writer.append_message(msg(n))
            writer.roll()
        await writer.close()
        segments = await list_segments(sink, "", QUEUE)
        await sink.delete(segments[1].key)  # segment 2 never completed
        await write_checkpoint(sink, "", QUEUE, Checkpoint(1, None, segments[0].key, 0, 0))
        again = SegmentWriter(sink, QUEUE, policy=BIG)
        await again.start()  # recovers where the archive ends
        left = [s.first_seq for s in await list_segments(sink, "", QUEUE)]
        again.append_message(msg(2))
        again.append_message(msg(3))
        await again.close()
        return (
            left,
            again.next_seq,
            [r.seq for s in await list_segments(sink, "", QUEUE) async for r in read_records(sink, s)],
        )

    left, next_seq, seqs = run(scenario())
    assert left == [1]  # segment 3 removed: the broker still holds its messages
    assert seqs == [1, 2, 3]  # archived again, without a gap
    assert next_seq == 4


def test_the_open_segment_rolls_once_no_record_came_for_max_idle_and_not_before(tmp_path):
    durable: list[Durable] = []

    async def scenario() -> tuple[float, int]:
        sink = await open_sink(tmp_path)
        policy = RollPolicy(max_bytes=1 << 30, max_age=3600, max_idle=0.3)
        writer = SegmentWriter(sink, QUEUE, policy=policy, on_durable=durable.append)
        await writer.start()
        started = time.monotonic()
        for n in range(1, 11):  # a record every 0.1 s: never idle for a whole 0.3 s
            writer.append_message(msg(n))
            await asyncio.sleep(0.1)
        during = len(durable)
        await eventually(lambda: durable, timeout=2, what="the segment rolled by idleness")
        waited = time.monotonic() - started
        await writer.close()
        return waited, during

    waited, during = run(scenario())
    assert during == 0, "rolled while records were still arriving"
    assert [(d.first_seq, d.last_seq) for d in durable] == [(1, 10)]
    assert waited < 1.0 + 2 * 0.3 + 0.5  # the last record, then between one and two idle ticks


def test_without_max_idle_a_quiet_segment_waits_for_its_age(tmp_path):
    durable: list[Durable] = []

    async def scenario() -> int:
        sink = await open_sink(tmp_path)
        writer = SegmentWriter(
            sink, QUEUE, policy=RollPolicy(max_bytes=1 << 30, max_age=3600), on_durable=durable.append
        )
        await writer.start()
        writer.append_message(msg(1))
        await stays(lambda: not durable, "the quiet segment stayed open", duration=1.2)
        await writer.close()

    run(scenario())
    assert [(d.first_seq, d.last_seq) for d in durable] == [(1, 1)]


def test_after_a_fast_burst_the_segment_rolls_long_before_max_idle(tmp_path):
    durable: list[Durable] = []

    async def scenario() -> float:
        sink = await open_sink(tmp_path)
        policy = RollPolicy(max_bytes=1 << 30, max_age=3600, max_idle=5.0)
        writer = SegmentWriter(sink, QUEUE, policy=policy, on_durable=durable.append)
        await writer.start()
        for n in range(1, 2001):  # some 2000 records a second for a second: the recent gap is 0.5 ms
            writer.append_message(msg(n))
            if n % 20 == 0:
                await asyncio.sleep(0.01)
        burst_ended = time.monotonic()
        await eventually(lambda: durable, timeout=5, what="the segment rolled after the burst")
        waited = time.monotonic() - burst_ended
        await writer.close()
        return waited

    waited = run(scenario())
    assert [(d.first_seq, d.last_seq) for d in durable] == [(1, 2000)]
    assert waited < 1.0, f"{waited:.2f}s after the burst: waited for max_idle, not for the end of the burst"


def test_a_renewed_writer_keeps_the_policy_and_callbacks_and_continues_after_the_archive_end(tmp_path):
    """After a SegmentConflict the source takes a fresh writer; the next session finds the archive's end."""

    async def scenario() -> tuple[int, list[int]]:
        sink = await open_sink(tmp_path)
        durable: list[Durable] = []
        writer = SegmentWriter(sink, QUEUE, policy=RollPolicy(max_records=5), on_durable=durable.append)
        await writer.start()
        for n in range(5):
            writer.append_message(msg(n))
        await writer.flush()
        for n in range(5, 8):
            writer.append_message(msg(n))  # closing a writer that has not failed commits what it holds
        fresh = await writer.renewed()
        assert (fresh.policy, fresh.on_durable, fresh.committed_seq) == (writer.policy, writer.on_durable, 0)
        await fresh.recover()  # what a session does first
        fresh.append_message(msg(99))
        await fresh.close()
        return fresh.committed_seq, [r.seq for _, records in await segments_and_records(sink) for r in records]

    committed, seqs = run(scenario())
    assert committed == 9 and seqs == list(range(1, 10))
