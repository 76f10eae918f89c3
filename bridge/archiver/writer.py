"""The rolling segment writer of one source: records in, durable segments out, in order.

Records are appended synchronously (the consumer's hot path); a segment is rolled by size, by age and
at every partition boundary, then uploaded by one task per source, strictly in order. `on_durable` is
called once per segment right after its upload succeeded; that is the moment the archiver may
acknowledge the messages it holds. The source's checkpoint follows when the queue of finished
segments runs dry, or once a second while it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import zstandard

from bridge.archive import layout
from bridge.archive.checkpoint import Checkpoint, write_checkpoint
from bridge.archive.record import CopyMark, Source, amqp_record_map, stream_record_map
from bridge.archive.segment import DEFAULT_BLOCK_BYTES, DEFAULT_LEVEL, SegmentBuilder
from bridge.archive.source_object import write_source_object
from bridge.archiver.backoff import Backoff
from bridge.archiver.recovery import find_archive_end
from bridge.errors import EXIT_SINK, WarrenError
from protocol.core.message import Message
from sinks import ObjectExists, Sink, SinkError
from sinks.deadlines import STALL_REPEAT, STALL_WARNING, StallReport

log = logging.getLogger("warren.archive")

HOUR_NS = 3600 * 1_000_000_000
# A checkpoint follows the segments it covers at most this often (seconds), and at once when flush()
# asks; readers of the tail, and recovery, look past it anyway. It is written beside the uploads,
# never in their way, and not after every segment: small segments would double the sink's writes.
CHECKPOINT_EVERY = 1.0
# Segments uploading at once: each starts as soon as it is rolled, and they are made known (and their
# messages acknowledged) strictly in order as each becomes durable.
UPLOADS_IN_FLIGHT = 8
# Durable segments remembered for reading back the records a session may see again (copies): enough
# for many prefetch windows of small segments.
RECENT_SEGMENTS = 512
# Rolling on idleness (RollPolicy.max_idle): how often the writer looks, how many of the recent gaps
# between records count as the end of a burst, and the least quiet spell that does.
IDLE_TICK = 0.05
IDLE_GAPS = 20
IDLE_MIN = 0.05
IDLE_SMOOTHING = 0.1
SINK_DOWN_REPORT = 60.0  # seconds of failure before the loud report, and between reports


@dataclass(frozen=True)
class RollPolicy:
    max_bytes: int = 16 * 1024 * 1024
    max_age: float = 60.0  # seconds from a segment's first record to its roll
    # The longest quiet spell (seconds without a new record) before the open segment rolls; a busy
    # source's is shorter (see _age_loop): the end of a burst or of a backlog is then durable (and
    # acknowledged) at once, not after max_age. None: only max_age.
    max_idle: float | None = None
    max_records: int | None = None  # a hard cap on records per segment
    # The broker's window when it waits for our acknowledgements (prefetch-count, on-confirm): segments
    # are then sized from it and the measured commit latency (`SegmentSizer`).
    window: int | None = None
    block_bytes: int = DEFAULT_BLOCK_BYTES
    max_pending_bytes: int = 64 * 1024 * 1024  # finished segments waiting for upload, before appends wait


@dataclass(frozen=True)
class Durable:
    """A segment now durable in the archive, and the caller's token of its last record."""

    source: Source
    key: str
    first_seq: int
    last_seq: int
    records: int
    last_offset: int | None
    last_token: Any


OnDurable = Callable[[Durable], None]


class CommitObserver(Protocol):
    """Hears every segment made durable (the metrics: bridge/metrics/archiver.py)."""

    def segment_durable(self, records: int, size: int, waited: float) -> None:
        """`size` bytes as stored; `waited` seconds from the segment's first record to its durability."""


WriterFactory = Callable[[OnDurable], "SegmentWriter"]  # a source makes its writer, handing it its callback


class ArchiveWriteFailed(WarrenError):
    """A segment could not be made durable; nothing after it is acknowledged."""

    exit_code = EXIT_SINK


class SegmentConflict(ArchiveWriteFailed):
    """The next segment's name was taken, with other content: another archiver wrote this source (one
    whose lease had just passed on, still finishing an upload). What this writer held is not
    acknowledged, so a new session that reads the archive's end again loses nothing (lease.py)."""


@dataclass
class _Finished:
    key: str
    data: bytes
    first_seq: int
    last_seq: int
    records: int
    last_offset: int | None
    last_captured_ns: int
    last_token: Any
    upload: asyncio.Future[None] | None = None
    opened: float = 0.0  # monotonic: the first record's append
    rolled: float = 0.0


class SegmentSizer:
    """Records per segment when the broker waits for acknowledgements: the window W holds the segment
    being filled and what arrives while earlier ones commit (rate R x commit latency L), so a segment of
    (W - R*L) / 2 keeps deliveries flowing with room to spare; between the sink's floor (`min_share` of
    W: more segments cost more requests and objects, W/8 locally) and W/2. Starts at W/4 or the floor;
    R and L are smoothed over the last segments."""

    SMOOTHING = 0.2

    def __init__(self, window: int, min_share: float = 1 / 8) -> None:
        self.window = window
        self.floor = window * min(0.5, min_share)
        self.records = max(1, int(max(window / 4, self.floor)))
        self._rate: float | None = None  # records a second
        self._latency: float | None = None  # seconds from roll to durable

    def observe(self, records: int, fill_seconds: float, commit_seconds: float) -> None:
        if fill_seconds > 0:
            rate = records / fill_seconds
            self._rate = rate if self._rate is None else self._rate + self.SMOOTHING * (rate - self._rate)
        latency = commit_seconds
        self._latency = latency if self._latency is None else self._latency + self.SMOOTHING * (latency - self._latency)
        if self._rate is None:
            return
        wanted = (self.window - self._rate * self._latency) / 2
        self.records = int(min(self.window / 2, max(self.floor, wanted))) or 1


class SegmentWriter:
    def __init__(
        self,
        sink: Sink,
        source: Source,
        *,
        prefix: str = "",
        policy: RollPolicy | None = None,
        on_durable: OnDurable | None = None,
        clock: Callable[[], int] = time.time_ns,
        retry_base: float = 0.2,
        retry_max: float = 30.0,
        max_attempts: int | None = None,
        observer: CommitObserver | None = None,
    ) -> None:
        self.sink = sink
        self.source = source
        self.prefix = prefix
        self.policy = policy or RollPolicy()
        self.on_durable = on_durable
        self.clock = clock
        self.retry_base, self.retry_max = retry_base, retry_max  # seconds before a write is tried again
        self.max_attempts = max_attempts  # None: a transient failure is retried until it passes
        self.next_seq = 1
        self.committed_seq = 0
        self.committed_offset: int | None = None
        self.error: BaseException | None = None
        self.observer = observer
        # Since when (monotonic) the sink refuses a write being retried, and why; None while it takes them.
        self.sink_failing_since: float | None = None
        self.sink_failure: str | None = None
        self._writes_pending: dict[int, float] = {}  # id -> when it started, while a write (and its retries) runs
        self._builder: SegmentBuilder | None = None
        self._compressor = zstandard.ZstdCompressor(level=DEFAULT_LEVEL)  # on the loop, one segment at a time
        self._partition_end = 0
        self._opened_at = 0.0
        self._last_token: Any = None
        self._queue: deque[_Finished] = deque()
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failed = asyncio.Event()  # set when `error` is: the owner stops taking records
        self._uploader: asyncio.Task[None] | None = None
        self._uploading = 0  # of the queued segments, those whose upload has started
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_due = asyncio.Event()
        self._checkpoint_caught_up = asyncio.Event()
        self._checkpoint_caught_up.set()
        self._checkpoint_now = asyncio.Event()  # flush() is waiting: no more rate limit
        self._checkpointed_at = 0.0
        self._checkpointed_seq = 0
        self._last_durable: _Finished | None = None
        self._ager: asyncio.Task[None] | None = None
        self._sizer = SegmentSizer(self.policy.window, sink.min_segment_share) if self.policy.window else None
        self._size_segments()
        self.recent: deque[str] = deque(maxlen=RECENT_SEGMENTS)  # keys of the newest durable segments, in order

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self, *, recover: bool = True) -> None:
        """Find where the archive ends for this source, then accept records after it. A source whose
        directory holds a hashed name first records its real names there (`_source`), for readers.
        `recover=False` leaves finding the end to the source, at the start of each session
        (`recover()`): recovery removes segments after a gap, which another archiver may be uploading
        until this one holds the source's lease (lease.py)."""
        if layout.has_hashed_names(self.source):
            key = layout.source_object_key(self.prefix, self.source)
            await self._with_retries(key, lambda: write_source_object(self.sink, self.prefix, self.source))
        if recover:
            await self.recover()
        self._checkpointed_seq = self.committed_seq
        self._uploader = asyncio.create_task(self._upload_loop(), name=f"upload {self.source}")
        self._uploader.add_done_callback(self._upload_ended)
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name=f"checkpoint {self.source}")
        self._checkpointer.add_done_callback(self._upload_ended)
        self._ager = asyncio.create_task(self._age_loop(), name=f"roll-by-age {self.source}")

    async def recover(self) -> None:
        """Where the archive ends for this source (recovery.py): the next record follows it."""
        end = await find_archive_end(self.sink, self.prefix, self.source, keep=RECENT_SEGMENTS)
        self.recent.clear()
        self.recent.extend(end.recent)
        self.committed_seq = end.last_seq
        self.committed_offset = end.last_offset
        self.next_seq = end.last_seq + 1

    async def flush(self) -> None:
        """Roll the open segment and wait until everything appended so far is durable, checkpoint
        included."""
        self.raise_if_failed()
        self.roll()
        await self._idle.wait()
        self.raise_if_failed()
        self._checkpoint_now.set()
        await self._checkpoint_caught_up.wait()
        self.raise_if_failed()

    async def close(self) -> None:
        """Commit what is open, then stop; raises if something could not be made durable."""
        try:
            await self.flush()
        finally:
            for task in (self._ager, self._uploader, self._checkpointer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    # ---- appending (hot path) ---------------------------------------------------------------

    def append_message(
        self,
        message: Message,
        *,
        token: Any = None,
        fingerprint: bytes | None = None,
        mark: CopyMark | None = None,
        snapshot: int | None = None,
    ) -> int:
        captured = self.clock()
        seq = self._seq_for(captured)
        builder = self._builder
        assert builder is not None
        record = amqp_record_map(seq, captured, message, fingerprint=fingerprint, mark=mark, snapshot=snapshot)
        builder.add_queue_record(record, seq, captured, mark, snapshot)
        self._last_token = token
        if self._full(builder):
            self.roll()
        return seq

    def append_stream(self, encoded: bytes, offset: int, chunk_ts_ms: int, *, token: Any = None) -> int:
        captured = self.clock()
        seq = self._seq_for(captured)
        self._append(stream_record_map(seq, captured, encoded, offset, chunk_ts_ms), token)
        return seq

    def append_stream_chunk(self, chunk: Sequence[tuple[int, bytes]], chunk_ts_ms: int) -> None:
        """A stream chunk's (offset, message) pairs, in offset order, as `append_stream` would take them
        one by one (one capture time for the chunk: it arrived at once), rolling wherever that would."""
        captured = self.clock()
        done = 0
        while done < len(chunk):
            self._open_for(captured)
            builder = self._builder
            assert builder is not None
            stop = len(chunk)
            if self.policy.max_records is not None:
                stop = min(stop, done + self.policy.max_records - builder.records)
            added = builder.add_stream_chunk(
                self.next_seq, captured, chunk_ts_ms, chunk, done, stop, max_bytes=self.policy.max_bytes
            )
            self.next_seq += added
            done += added
            self._last_token = None
            if self._full(builder):
                self.roll()

    @property
    def has_room(self) -> bool:
        return self._room.is_set()

    async def wait_for_room(self) -> None:
        """Wait while finished segments waiting for upload exceed `max_pending_bytes`."""
        await self._room.wait()
        self.raise_if_failed()

    def _seq_for(self, captured_ns: int) -> int:
        """The next record's number, in a segment open for `captured_ns` (per record: the open segment's
        usual case is checked here, without a call)."""
        if self._builder is None or captured_ns >= self._partition_end or self.error is not None:
            self._open_for(captured_ns)
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    def _open_for(self, captured_ns: int) -> None:
        """A segment open for records captured at `captured_ns`."""
        self.raise_if_failed()
        if captured_ns >= self._partition_end and self._builder is not None:
            self.roll()  # a segment never spans two partitions
        if self._builder is None:
            self._builder = SegmentBuilder(
                self.source, created_ns=captured_ns, block_bytes=self.policy.block_bytes, compressor=self._compressor
            )
            self._partition_end = layout.partition_start_ns(captured_ns) + HOUR_NS
            self._opened_at = time.monotonic()

    def _size_segments(self) -> None:
        """Records a segment holds before it rolls: the policy's cap, or the sizer's choice if smaller."""
        limits = [self.policy.max_records, self._sizer.records if self._sizer is not None else None]
        self._roll_records = min((n for n in limits if n is not None), default=sys.maxsize)

    def _full(self, builder: SegmentBuilder) -> bool:
        return builder.size >= self.policy.max_bytes or builder.records >= self._roll_records

    def _append(self, record: dict[str, Any], token: Any) -> None:
        builder = self._builder
        assert builder is not None
        builder.add(record)
        self._last_token = token
        if self._full(builder):
            self.roll()

    # ---- rolling and uploading -------------------------------------------------------------

    def roll(self) -> None:
        builder, self._builder = self._builder, None
        if builder is None or builder.records == 0:
            return
        stats = builder.stats
        data = builder.finish()
        self._queue.append(
            _Finished(
                key=layout.segment_key(self.prefix, self.source, stats.first_seq, stats.first_captured_ns),
                data=data,
                first_seq=stats.first_seq,
                last_seq=stats.last_seq,
                records=stats.records,
                last_offset=stats.last_offset,
                last_captured_ns=stats.last_captured_ns,
                last_token=self._last_token,
                opened=self._opened_at,
                rolled=time.monotonic(),
            )
        )
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.policy.max_pending_bytes:
            self._room.clear()
        self._idle.clear()
        self._checkpoint_caught_up.clear()
        self._start_uploads()
        self._wakeup.set()

    def _start_uploads(self) -> None:
        """Start the uploads of queued segments, in order, while fewer than UPLOADS_IN_FLIGHT run."""
        for segment in itertools.islice(self._queue, self._uploading, None):
            if self._uploading >= UPLOADS_IN_FLIGHT:
                return
            segment.upload = asyncio.ensure_future(self._make_durable(segment))
            self._uploading += 1

    async def _age_loop(self) -> None:
        """Rolls the open segment at max_age, and when records stop coming: after a quiet spell of
        IDLE_GAPS times the recent gap between records, at least IDLE_MIN and at most max_idle. A
        backlog's last segment is then durable within a tick or two of its last record, and a source
        that sends a message every few seconds waits max_idle (not a segment per message). Measured
        per tick from the sequence counter: nothing is added per record."""
        idle_after = self.policy.max_idle
        tick = IDLE_TICK if idle_after is not None else max(0.05, min(1.0, self.policy.max_age / 4))
        seen = self.next_seq
        last_arrival = time.monotonic()
        rate = 0.0  # records a second, smoothed over the last ~half second
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            arrived, seen = self.next_seq - seen, self.next_seq
            rate += IDLE_SMOOTHING * (arrived / tick - rate)
            if arrived:
                last_arrival = now
            if self._builder is None:
                continue
            if now - self._opened_at >= self.policy.max_age:
                self.roll()
            elif idle_after is not None and not arrived:
                quiet_enough = min(idle_after, max(IDLE_MIN, IDLE_GAPS / rate)) if rate > 0 else idle_after
                if now - last_arrival >= quiet_enough:
                    self.roll()

    async def _upload_loop(self) -> None:
        """Make durable segments known in order, each as soon as it and all before it are durable; a
        failure it cannot retry ends it (`_upload_ended`), and nothing after it is made known."""
        while True:
            if not self._queue:
                self._idle.set()
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            head = self._queue[0]
            if head.upload is None:
                self._start_uploads()
            assert head.upload is not None
            try:
                await head.upload
            except BaseException:
                for segment in self._queue:  # nothing after a failed segment may become known
                    if segment.upload is not None:
                        segment.upload.cancel()
                raise
            self._queue.popleft()
            self._uploading -= 1
            self._pending_bytes -= len(head.data)
            if self._pending_bytes < self.policy.max_pending_bytes:
                self._room.set()
            self._notify(head)  # durable now: acknowledge; the checkpoint follows on its own
            now = time.monotonic()
            if self._sizer is not None:
                self._sizer.observe(head.records, head.rolled - head.opened, now - head.rolled)
                self._size_segments()
            if self.observer is not None:
                self.observer.segment_durable(head.records, len(head.data), now - head.opened)
            self._last_durable = head
            self._checkpoint_due.set()
            self._start_uploads()

    async def _checkpoint_loop(self) -> None:
        """Checkpoint the newest durable segment at most once a CHECKPOINT_EVERY, and at once when
        flush() asks for it."""
        while True:
            await self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            wait = self._checkpointed_at + CHECKPOINT_EVERY - time.monotonic()
            if wait > 0 and not self._checkpoint_now.is_set():
                # asyncio.timeout, not wait_for, which on Python 3.11 loses a cancellation arriving as
                # flush() sets the event: this loop ends only by cancellation, and close waits for it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._checkpoint_now.wait()
            self._checkpoint_now.clear()
            segment = self._last_durable
            if segment is not None and segment.last_seq > self._checkpointed_seq:
                await self._checkpoint(segment)
                self._checkpointed_seq = segment.last_seq
            if not self._queue and self._checkpointed_seq >= self.committed_seq:
                self._checkpoint_caught_up.set()
            elif self._last_durable is not None and self._last_durable.last_seq > self._checkpointed_seq:
                self._checkpoint_due.set()

    def _upload_ended(self, task: asyncio.Task[None]) -> None:
        """The upload loop stopped other than by cancellation: nothing more can be made durable."""
        if task.cancelled() or task.exception() is None:
            return
        if self.error is not None:
            return
        self.error = task.exception()
        self.failed.set()
        log.error("archive write failed", extra={"source": str(self.source), "error": str(self.error)})
        self._room.set()  # wake waiters so they see the error
        self._idle.set()
        self._checkpoint_caught_up.set()

    async def _make_durable(self, segment: _Finished) -> None:
        await self._with_retries(
            segment.key, lambda: self._put_segment(segment), doing="writing segment", size=len(segment.data)
        )

    async def _checkpoint(self, segment: _Finished) -> None:
        checkpoint = Checkpoint(
            segment.last_seq,
            segment.last_offset if segment.last_offset is not None else self.committed_offset,
            segment.key,
            segment.last_captured_ns,
            self.clock(),
        )
        key = layout.checkpoint_key(self.prefix, self.source)
        await self._with_retries(
            key, lambda: write_checkpoint(self.sink, self.prefix, self.source, checkpoint), doing="writing checkpoint"
        )
        self._checkpointed_at = time.monotonic()

    async def _with_retries(
        self, key: str, operation: Callable[[], Awaitable[None]], *, doing: str = "writing", size: int | None = None
    ) -> None:
        """Transient failures are retried with capped backoff for as long as they last (nothing is
        acknowledged meanwhile, so the broker keeps the messages); permanent ones stop the writer.

        A write never waits in silence: still pending after STALL_WARNING seconds (one slow attempt, or
        several failed ones) it is reported, again every STALL_REPEAT seconds, loudly every
        SINK_DOWN_REPORT seconds once it has lasted that long, and once more when it completes.
        """
        write_id = id(operation)
        self._writes_pending[write_id] = time.monotonic()
        try:
            await self._attempt_until_done(key, operation, doing, size)
        finally:
            del self._writes_pending[write_id]

    async def _attempt_until_done(
        self, key: str, operation: Callable[[], Awaitable[None]], doing: str, size: int | None
    ) -> None:
        attempt = 0
        failing_since: float | None = None
        backoff = Backoff(self.retry_base, max_delay=self.retry_max)
        with StallReport(
            log,
            sink=self.sink.url,
            key=key,
            operation=doing,
            size=size,
            warn_after=STALL_WARNING,
            repeat=STALL_REPEAT,
            message="sink write stalled: nothing after it is acknowledged until it completes",
            loud_after=SINK_DOWN_REPORT,
            loud_message="sink down: nothing is acknowledged until it is back; messages wait in the broker",
        ) as pending:
            while True:
                try:
                    await operation()
                except SinkError as err:
                    attempt += 1
                    if not err.retryable or (self.max_attempts is not None and attempt >= self.max_attempts):
                        raise ArchiveWriteFailed(f"cannot write {key} to {self.sink.url}: {err}") from err
                    failing_since = failing_since or time.monotonic()
                    pending.error = str(err)
                    self.sink_failing_since = self.sink_failing_since or failing_since
                    self.sink_failure = str(err)
                    delay = backoff.next_delay()
                    log.warning(
                        "sink write failed, retrying",
                        extra={
                            "sink": self.sink.url,
                            "key": key,
                            "operation": doing,
                            "error": str(err),
                            "retry_in": round(delay, 2),
                        },
                    )
                    await asyncio.sleep(delay)
                    continue
                self.sink_failing_since = self.sink_failure = None
                if failing_since is not None:
                    pending.completed("sink writable again", after_s=round(time.monotonic() - failing_since, 1))
                else:
                    pending.completed()
                return

    async def _put_segment(self, segment: _Finished) -> None:
        try:
            await self.sink.put(segment.key, segment.data, if_absent=True)
        except ObjectExists:
            # A retry of an upload whose outcome we never learned lands here; anything else under our
            # deterministic name means another writer archives this source.
            if await self.sink.get(segment.key) != segment.data:
                raise SegmentConflict(
                    f"{segment.key} already exists with other content: is another archiver writing {self.source}?"
                ) from None

    def _notify(self, segment: _Finished) -> None:
        self.recent.append(segment.key)
        self.committed_seq = segment.last_seq
        if segment.last_offset is not None:
            self.committed_offset = segment.last_offset
        if self.on_durable is not None:
            self.on_durable(
                Durable(
                    self.source,
                    segment.key,
                    segment.first_seq,
                    segment.last_seq,
                    segment.records,
                    segment.last_offset,
                    segment.last_token,
                )
            )

    def sink_trouble(self) -> tuple[float, str] | None:
        """For how long, and why, the sink has not been taking this writer's writes: refusing them, or
        one pending past STALL_WARNING; None while it takes them (the metrics and /readyz)."""
        now = time.monotonic()
        if self.sink_failing_since is not None:
            return now - self.sink_failing_since, self.sink_failure or "refusing writes"
        oldest = min(self._writes_pending.values(), default=now)
        if now - oldest >= STALL_WARNING:
            return now - oldest, f"a write pending for {now - oldest:.0f}s"
        return None

    async def renewed(self) -> SegmentWriter:
        """A fresh writer for the same source, policy and callbacks, started without recovery (the next
        session finds the archive's end); this one closed. For a writer that failed on a SegmentConflict:
        a failed writer makes nothing more durable, and the broker still holds (or the stream keeps)
        what it held."""
        with contextlib.suppress(ArchiveWriteFailed, SinkError):
            await self.close()
        fresh = SegmentWriter(
            self.sink,
            self.source,
            prefix=self.prefix,
            policy=self.policy,
            on_durable=self.on_durable,
            clock=self.clock,
            retry_base=self.retry_base,
            retry_max=self.retry_max,
            max_attempts=self.max_attempts,
            observer=self.observer,
        )
        await fresh.start(recover=False)
        return fresh

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise ArchiveWriteFailed(f"archive of {self.source} stopped: {self.error}") from self.error
