"""A sink that stalls is never silent, and a mirror member that stalls holds nothing back.

The segment writer reports a write still pending after STALL_WARNING seconds, again while it lasts,
loudly after SINK_DOWN_REPORT, and once more when it completes; nothing is made durable meanwhile. The
mirror reports a stalled member by name while the others make the quorum. `bounded` ends requests that
stop moving or outlive their deadline. Storage is in memory; the thresholds are shortened.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable

import pytest

import bridge.archiver.writer as writer_module
from bridge.archive.record import Source, SourceKind
from bridge.archiver.writer import Durable, RollPolicy, SegmentWriter
from protocol.core.message import Message
from protocol.loop import run
from sinks import ObjectExists, ObjectInfo, ObjectNotFound, Sink, SinkUnavailable
from sinks.deadlines import UPLOAD_SLICE, Deadlines, Stalled, StallReport, Upload, bounded
from sinks.mirror import MirroredSink
from tests.polling import eventually

QUEUE = Source("/", SourceKind.QUEUE, "orders")
BIG = RollPolicy(max_bytes=1 << 30, max_age=3600)
WARN = 0.2  # the shortened STALL_WARNING
REPEAT = 0.3  # the shortened STALL_REPEAT
ROUNDING = 0.05  # waited_s is logged to a tenth of a second


class MemorySink(Sink):
    """Objects in a dict. While `stalled(key)` is true, a put of that key waits until `release` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.stalled: Callable[[str], bool] = lambda key: False
        self.release = asyncio.Event()
        self.failures = 0  # the next puts that fail as SinkUnavailable
        self.puts_started = 0

    @property
    def url(self) -> str:
        return f"memory://{self.name}"

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        self.puts_started += 1
        if self.stalled(key):
            await self.release.wait()
        if self.failures:
            self.failures -= 1
            raise SinkUnavailable("injected fault", sink=self.url, key=key)
        if if_absent and key in self.objects:
            raise ObjectExists("an object already exists under this key", sink=self.url, key=key)
        self.objects[key] = bytes(data)

    async def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectNotFound("no object under this key", sink=self.url, key=key)
        return self.objects[key]

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        data = await self.get(key)
        begin = max(len(data) + start, 0) if start < 0 else start
        return data[begin : begin + length]

    async def head(self, key: str) -> ObjectInfo | None:
        data = self.objects.get(key)
        return None if data is None else ObjectInfo(key, len(data), 0)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(self.objects[key]), 0)

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def close(self) -> None:
        pass


def segments_only(key: str) -> bool:
    return key.endswith(".wseg")


@pytest.fixture(autouse=True)
def short_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "STALL_WARNING", WARN)
    monkeypatch.setattr(writer_module, "STALL_REPEAT", REPEAT)
    import sinks.mirror

    monkeypatch.setattr(sinks.mirror, "STALL_WARNING", WARN)
    monkeypatch.setattr(sinks.mirror, "STALL_REPEAT", REPEAT)


def msg(n: int) -> Message:
    return Message.build(random.Random(n).randbytes(40), {"message_id": f"m{n}"}, routing_key="r")


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


# ---- the segment writer -------------------------------------------------------------------------


def test_a_stalled_segment_write_is_reported_within_seconds_again_while_it_lasts_and_when_it_completes(caplog):
    caplog.set_level(logging.INFO)
    durable: list[Durable] = []

    async def scenario() -> None:
        sink = MemorySink("stalling")
        writer = SegmentWriter(sink, QUEUE, policy=BIG, on_durable=durable.append, retry_base=0.01, retry_max=0.01)
        await writer.start()
        sink.stalled = segments_only
        writer.append_message(msg(1))
        writer.roll()
        await eventually(lambda: len(lines(caplog, "sink write stalled")) >= 3, "three stall reports")
        assert durable == []  # nothing acknowledged while the write is pending
        sink.release.set()
        await asyncio.wait_for(writer.flush(), 5)
        await writer.close()

    run(scenario())
    reports = lines(caplog, "sink write stalled")
    first = reports[0]
    assert first.levelno == logging.WARNING
    assert first.sink == "memory://stalling" and first.operation == "writing segment"
    assert first.key.endswith(".wseg") and first.bytes > 0
    assert WARN - ROUNDING <= first.waited_s < WARN + 1
    assert reports[1].waited_s >= first.waited_s + REPEAT - 2 * ROUNDING
    completed = lines(caplog, "sink write completed")
    assert len(completed) == 1 and completed[0].key == first.key and completed[0].waited_s >= reports[-1].waited_s
    assert [d.last_seq for d in durable] == [1]


def test_a_write_pending_past_the_down_report_is_reported_loudly(caplog, monkeypatch):
    monkeypatch.setattr(writer_module, "SINK_DOWN_REPORT", 0.3)
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        sink = MemorySink("stalling")
        writer = SegmentWriter(sink, QUEUE, policy=BIG, retry_base=0.01, retry_max=0.01)
        await writer.start()
        sink.stalled = segments_only
        writer.append_message(msg(1))
        writer.roll()
        await eventually(lambda: bool(lines(caplog, "sink down")), "the loud report")
        sink.release.set()
        await asyncio.wait_for(writer.close(), 5)

    run(scenario())
    loud = lines(caplog, "sink down: nothing is acknowledged until it is back")
    assert loud[0].levelno == logging.ERROR and loud[0].sink == "memory://stalling" and loud[0].down_s >= 0
    assert loud[0].waited_s >= 0.3


def test_a_write_that_completes_in_time_logs_nothing(caplog):
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        sink = MemorySink("healthy")
        writer = SegmentWriter(sink, QUEUE, policy=BIG, retry_base=0.01, retry_max=0.01)
        await writer.start()
        writer.append_message(msg(1))
        await asyncio.wait_for(writer.close(), 5)
        await asyncio.sleep(WARN * 3)  # past the threshold: no timer is left behind

    run(scenario())
    assert not lines(caplog, "sink write")


def test_failed_attempts_name_the_operation_and_the_recovery_says_how_long_it_took(caplog):
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        sink = MemorySink("flaky")
        writer = SegmentWriter(sink, QUEUE, policy=BIG, retry_base=0.03, retry_max=0.03)
        await writer.start()
        sink.failures = 3
        writer.append_message(msg(1))
        await asyncio.wait_for(writer.close(), 5)

    run(scenario())
    failed = lines(caplog, "sink write failed, retrying")
    assert len(failed) == 3 and failed[0].operation == "writing segment" and "injected fault" in failed[0].error
    again = lines(caplog, "sink writable again")
    assert len(again) == 1 and again[0].operation == "writing segment" and again[0].after_s >= 0


# ---- a mirror with a stalled member -------------------------------------------------------------


def test_a_stalled_mirror_member_is_reported_by_name_and_holds_back_no_acknowledgement(caplog):
    caplog.set_level(logging.INFO)
    durable: list[Durable] = []

    async def scenario() -> None:
        members = [MemorySink(f"member{i}") for i in range(3)]
        mirror = MirroredSink(members, write_quorum=2)
        writer = SegmentWriter(mirror, QUEUE, policy=BIG, on_durable=durable.append, retry_base=0.01, retry_max=0.01)
        await writer.start()
        members[1].stalled = lambda key: True  # segments and checkpoints alike
        for n in range(1, 4):
            writer.append_message(msg(n))
            writer.roll()
        # Durable on the quorum at once, and the writer finds the whole queue made durable.
        await asyncio.wait_for(writer.flush(), 2)
        assert [d.last_seq for d in durable] == [1, 2, 3]
        assert all(d.key in members[0].objects and d.key in members[2].objects for d in durable)
        assert not any(d.key in members[1].objects for d in durable)
        await eventually(lambda: bool(lines(caplog, "mirror member stalled")), "the member's stall report")
        assert not lines(caplog, "sink write stalled")  # the writer itself waits on nothing
        members[1].release.set()
        await eventually(lambda: all(d.key in members[1].objects for d in durable), "the member took its writes")
        await writer.close()
        await mirror.close()

    run(scenario())
    report = lines(caplog, "mirror member stalled")[0]
    assert report.levelno == logging.WARNING and report.sink == "memory://member1" and report.operation == "writing"
    assert report.waited_s >= WARN - ROUNDING
    completed = [r for r in lines(caplog, "sink write completed") if r.sink == "memory://member1"]
    assert completed, "the stalled member's writes were reported completed"


# ---- StallReport and bounded, directly ------------------------------------------------------------


def test_a_stall_report_stopped_before_its_threshold_logs_nothing(caplog):
    log = logging.getLogger("test.stall")

    async def scenario() -> None:
        with StallReport(log, sink="s", key="k", operation="writing", warn_after=0.05) as pending:
            pending.completed()
        await asyncio.sleep(0.15)

    caplog.set_level(logging.INFO, logger="test.stall")
    run(scenario())
    assert caplog.records == []


FAST = Deadlines(connect=0.1, stall=0.2, min_rate=1 << 30)


def test_bounded_returns_what_a_request_in_time_returns():
    async def request() -> str:
        await asyncio.sleep(0.01)
        return "answer"

    assert run(bounded(request(), FAST)) == "answer"


def test_bounded_ends_a_request_that_outlives_its_total_deadline_and_cancels_it():
    cancelled = []

    async def request() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    began = time.monotonic()
    with pytest.raises(Stalled, match="not done within"):
        run(bounded(request(), FAST, size=0))
    assert time.monotonic() - began < FAST.connect + FAST.stall + 0.5
    assert cancelled == [True]


def test_bounded_ends_an_upload_that_stops_moving_long_before_its_total_deadline():
    upload = Upload(b"x" * (1 << 20))
    slow = Deadlines(connect=0.1, stall=0.2, min_rate=1000)  # a total deadline of over 17 minutes

    async def request() -> None:
        async for _ in upload:
            if upload.sent >= 2 * UPLOAD_SLICE:
                await asyncio.sleep(10)  # the peer stops reading

    began = time.monotonic()
    with pytest.raises(Stalled, match="the upload stopped moving at 524288 of 1048576 bytes"):
        run(bounded(request(), slow, size=upload.size, upload=upload))
    assert time.monotonic() - began < 2


def test_bounded_gives_an_upload_not_yet_started_the_connect_deadline_too():
    upload = Upload(b"x" * 10)

    async def request() -> None:
        await asyncio.sleep(10)  # waiting for 100-continue that never comes

    began = time.monotonic()
    with pytest.raises(Stalled, match="took none of the upload"):
        run(bounded(request(), Deadlines(connect=0.2, stall=0.2, min_rate=1), size=10, upload=upload))
    assert 0.4 <= time.monotonic() - began < 1.5
