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
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bridge.archive import layout
from bridge.archive.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from bridge.archive.reader import list_segments, read_index
from bridge.archive.record import Source, amqp_record_map, stream_record_map
from bridge.archive.segment import DEFAULT_BLOCK_BYTES, SegmentBuilder
from bridge.errors import EXIT_SINK, ConfigError, WarrenError
from protocol.message import Message
from sinks import ObjectExists, Sink, SinkError

log = logging.getLogger("warren.archive")

HOUR_NS = 3600 * 1_000_000_000
# A checkpoint follows the segments it covers when the upload queue runs dry, or at least this often
# (seconds) while it does not; readers of the tail look past it anyway.
CHECKPOINT_EVERY = 1.0
UPLOADS_IN_FLIGHT = 4
SINK_DOWN_REPORT = 60.0  # seconds of failure before the loud report, and between reports


@dataclass(frozen=True)
class RollPolicy:
    max_bytes: int = 64 * 1024 * 1024
    max_age: float = 60.0  # seconds from a segment's first record to its roll
    max_records: int | None = None  # e.g. half the prefetch, when the broker waits for our acks
    block_bytes: int = DEFAULT_BLOCK_BYTES
    max_pending_bytes: int = 256 * 1024 * 1024  # finished segments waiting for upload, before appends wait


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


class ArchiveWriteFailed(WarrenError):
    """A segment could not be made durable; nothing after it is acknowledged."""

    exit_code = EXIT_SINK


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


class SegmentWriter:
    def __init__(
        self,
        sink: Sink,
        source: Source,
        *,
        prefix: str = "",
        policy: RollPolicy | None = None,
        on_durable: Callable[[Durable], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
        retry_delays: tuple[float, ...] = (0.2, 0.5, 1, 2, 5, 10, 30),
        max_attempts: int | None = None,
    ) -> None:
        self.sink = sink
        self.source = source
        self.prefix = prefix
        try:
            layout.source_prefix(prefix, source)  # refuse at start a name that cannot be stored
        except layout.NameTooLong as err:
            raise ConfigError(f"cannot archive {source}: {err}") from None
        self.policy = policy or RollPolicy()
        self.on_durable = on_durable
        self.clock = clock
        self.retry_delays = retry_delays  # the last one repeats
        self.max_attempts = max_attempts  # None: a transient failure is retried until it passes
        self.next_seq = 1
        self.committed_seq = 0
        self.committed_offset: int | None = None
        self.error: BaseException | None = None
        self._builder: SegmentBuilder | None = None
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
        self._checkpointed_at = 0.0
        self._ager: asyncio.Task[None] | None = None

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Find where the archive ends for this source, then accept records after it."""
        await self.recover()
        self._uploader = asyncio.create_task(self._upload_loop(), name=f"upload {self.source}")
        self._ager = asyncio.create_task(self._age_loop(), name=f"roll-by-age {self.source}")

    async def recover(self) -> None:
        """Where the archive ends for this source: the checkpoint may lag the segments (a crash between
        the two), so look past it, up to the first gap."""
        checkpoint = await read_checkpoint(self.sink, self.prefix, self.source)
        last_seq = checkpoint.last_seq if checkpoint else 0
        last_offset = checkpoint.last_offset if checkpoint else None
        for seg in await list_segments(self.sink, self.prefix, self.source):
            if seg.first_seq <= last_seq:
                continue
            if seg.first_seq > last_seq + 1:
                # Uploaded alongside a segment that never completed: segments are made known (and
                # their messages acknowledged) only in order, so the broker still holds these messages
                # and delivers them again. Keeping them would leave a gap in the sequence.
                log.warning("removing a segment uploaded after one that never completed", extra={"key": seg.key})
                await self.sink.delete(seg.key)
                continue
            index = await read_index(self.sink, seg)
            last_seq = index.last_seq
            if index.last_offset is not None:
                last_offset = index.last_offset
        self.committed_seq = last_seq
        self.committed_offset = last_offset
        self.next_seq = last_seq + 1

    async def flush(self) -> None:
        """Roll the open segment and wait until everything appended so far is durable."""
        self.raise_if_failed()
        self.roll()
        await self._idle.wait()
        self.raise_if_failed()

    async def close(self) -> None:
        """Commit what is open, then stop; raises if something could not be made durable."""
        try:
            await self.flush()
        finally:
            for task in (self._ager, self._uploader):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    # ---- appending (hot path) ---------------------------------------------------------------

    def append_message(self, message: Message, *, token: Any = None, fingerprint: bytes | None = None) -> int:
        captured = self.clock()
        seq = self._seq_for(captured)
        self._append(amqp_record_map(seq, captured, message, fingerprint=fingerprint), token)
        return seq

    def append_stream(self, encoded: bytes, offset: int, chunk_ts_ms: int, *, token: Any = None) -> int:
        captured = self.clock()
        seq = self._seq_for(captured)
        self._append(stream_record_map(seq, captured, encoded, offset, chunk_ts_ms), token)
        return seq

    @property
    def has_room(self) -> bool:
        return self._room.is_set()

    async def wait_for_room(self) -> None:
        """Wait while finished segments waiting for upload exceed `max_pending_bytes`."""
        await self._room.wait()
        self.raise_if_failed()

    def _seq_for(self, captured_ns: int) -> int:
        self.raise_if_failed()
        if captured_ns >= self._partition_end and self._builder is not None:
            self.roll()  # a segment never spans two partitions
        if self._builder is None:
            self._builder = SegmentBuilder(self.source, created_ns=captured_ns, block_bytes=self.policy.block_bytes)
            self._partition_end = layout.partition_start_ns(captured_ns) + HOUR_NS
            self._opened_at = time.monotonic()
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def _append(self, record: dict[str, Any], token: Any) -> None:
        builder = self._builder
        assert builder is not None
        builder.add(record)
        self._last_token = token
        if builder.size >= self.policy.max_bytes or (
            self.policy.max_records is not None and builder.records >= self.policy.max_records
        ):
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
            )
        )
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.policy.max_pending_bytes:
            self._room.clear()
        self._idle.clear()
        self._wakeup.set()

    async def _age_loop(self) -> None:
        tick = max(0.05, min(1.0, self.policy.max_age / 4))
        while True:
            await asyncio.sleep(tick)
            if self._builder is not None and time.monotonic() - self._opened_at >= self.policy.max_age:
                self.roll()

    async def _upload_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    # Several uploads at once (their fsyncs and round trips overlap), made known in order.
                    batch = list(itertools.islice(self._queue, UPLOADS_IN_FLIGHT))
                    uploads = [asyncio.ensure_future(self._make_durable(segment)) for segment in batch]
                    try:
                        for segment, upload in zip(batch, uploads, strict=True):
                            await upload
                            self._queue.popleft()
                            self._pending_bytes -= len(segment.data)
                            if self._pending_bytes < self.policy.max_pending_bytes:
                                self._room.set()
                            self._notify(segment)  # durable now: acknowledge; the checkpoint may lag
                    finally:
                        for upload in uploads:
                            upload.cancel()
                        await asyncio.gather(*uploads, return_exceptions=True)
                    if not self._queue or time.monotonic() - self._checkpointed_at >= CHECKPOINT_EVERY:
                        await self._checkpoint(batch[-1])
                if not self._queue:
                    self._idle.set()
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            self.error = err
            self.failed.set()
            log.error("archive write failed", extra={"source": str(self.source), "error": str(err)})
            self._room.set()  # wake waiters so they see the error
            self._idle.set()

    async def _make_durable(self, segment: _Finished) -> None:
        await self._with_retries(segment.key, lambda: self._put_segment(segment))

    async def _checkpoint(self, segment: _Finished) -> None:
        checkpoint = Checkpoint(
            segment.last_seq,
            segment.last_offset if segment.last_offset is not None else self.committed_offset,
            segment.key,
            segment.last_captured_ns,
            self.clock(),
        )
        key = layout.checkpoint_key(self.prefix, self.source)
        await self._with_retries(key, lambda: write_checkpoint(self.sink, self.prefix, self.source, checkpoint))
        self._checkpointed_at = time.monotonic()

    async def _with_retries(self, key: str, operation: Callable[[], Awaitable[None]]) -> None:
        """Transient failures are retried with capped backoff for as long as they last (nothing is
        acknowledged meanwhile, so the broker keeps the messages); permanent ones stop the writer."""
        attempt = 0
        failing_since: float | None = None
        last_report = 0.0
        while True:
            try:
                await operation()
                if failing_since is not None:
                    log.warning(
                        "sink writable again",
                        extra={"sink": self.sink.url, "after_s": round(time.monotonic() - failing_since, 1)},
                    )
                return
            except SinkError as err:
                attempt += 1
                if not err.retryable or (self.max_attempts is not None and attempt >= self.max_attempts):
                    raise ArchiveWriteFailed(f"cannot write {key} to {self.sink.url}: {err}") from err
                now = time.monotonic()
                failing_since = failing_since or now
                delay = self.retry_delays[min(attempt - 1, len(self.retry_delays) - 1)] * random.uniform(0.5, 1.0)
                down = now - failing_since
                if down >= SINK_DOWN_REPORT and now - last_report >= SINK_DOWN_REPORT:
                    last_report = now
                    log.error(
                        "sink down: nothing is acknowledged until it is back; messages wait in the broker",
                        extra={"sink": self.sink.url, "down_s": round(down), "error": str(err)},
                    )
                else:
                    log.warning(
                        "sink write failed, retrying",
                        extra={"sink": self.sink.url, "key": key, "error": str(err), "retry_in": round(delay, 2)},
                    )
                await asyncio.sleep(delay)

    async def _put_segment(self, segment: _Finished) -> None:
        try:
            await self.sink.put(segment.key, segment.data, if_absent=True)
        except ObjectExists:
            # A retry of an upload whose outcome we never learned lands here; anything else under our
            # deterministic name means another writer archives this source.
            if await self.sink.get(segment.key) != segment.data:
                raise ArchiveWriteFailed(
                    f"{segment.key} already exists with other content: is another archiver writing {self.source}?"
                ) from None

    def _notify(self, segment: _Finished) -> None:
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

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise ArchiveWriteFailed(f"archive of {self.source} stopped: {self.error}") from self.error
