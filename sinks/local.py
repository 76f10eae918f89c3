"""A sink on a local (or mounted) filesystem: one file per object, written atomically and durably.

A put writes a `.tmp-*` file beside the target, fsyncs it, renames (or, for `if_absent`, links) it
into place and fsyncs the directory, so a crash leaves either the old object or the new one under
the key, never a partial one. Temporary files are never listed and are swept by `cleanup_temporary`.

All blocking file I/O runs on a bounded pool of worker threads, so the event loop never waits on the
disk, and every operation is watched: each step (a MiB written, an fsync, a rename, a directory read)
must finish within `Deadlines.for_bytes` of what it moves, or the operation fails as SinkUnavailable
(a stalled disk or NFS mount). The thread cannot be interrupted; it is told to give up at its next
step, and until it has, further writes of that key fail at once rather than race it.

A full disk or quota (ENOSPC, EDQUOT) is SinkUnavailable too, saying how much was free and how much the
write needed; the partial temporary file is removed, and a later retry succeeds once there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sinks.base import ObjectInfo, Sink, validate_key
from sinks.deadlines import DEFAULT_DEADLINES, Deadlines
from sinks.errors import (
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    SinkConfigError,
    SinkError,
    SinkPermissionDenied,
    SinkUnavailable,
)

T = TypeVar("T")

TEMP_PREFIX = ".tmp-"
STALE_TEMP_AGE = 60.0  # seconds; a live put touches its temporary file far more recently than this
_STAT_BATCH = 256  # files stat'ed per worker-thread call while listing
WRITE_STEP = 1024 * 1024  # bytes written per step of a put, each step watched
WORKERS = 16  # threads for the file I/O of every local sink in the process
# Archived messages are the broker's data: the owner and its group (an operators' group reading the
# archive) only, never the world. The process's umask narrows these further, never widens them.
FILE_MODE = 0o640
DIR_MODE = 0o750

_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_NOT_AN_OBJECT = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}  # vfat, some FUSE and SMB mounts
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}

Entry = tuple[str, bool]  # (name, is_dir) in one directory

# Shared by every local sink: a thread stuck in a dead mount holds one of these, never one of the
# default executor's (which also resolves host names for the broker connections).
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="warren-local")
        return _pool


class _GaveUp(Exception):
    """Raised in a worker thread at its next step once the event loop has given up on the operation."""


class Steps:
    """The deadline of the step a worker thread is in, set by the thread, watched by the event loop."""

    __slots__ = ("_deadlines", "abandoned", "deadline", "limit")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self.abandoned = False
        self.limit = deadlines.stall
        self.deadline = time.monotonic() + self.limit

    def next(self, size: int = 0) -> None:
        """A step begins that moves `size` bytes; raises _GaveUp if the operation was abandoned."""
        if self.abandoned:
            raise _GaveUp
        self.limit = self._deadlines.for_bytes(size)
        self.deadline = time.monotonic() + self.limit


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing_dirs(directory: Path, stop: Path) -> list[Path]:
    """The directories from `directory` up to (not including) `stop` that do not exist, deepest first."""
    missing = []
    while directory != stop and not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    return missing


def _make_dirs(missing: list[Path]) -> None:
    for made in reversed(missing):
        # Made concurrently: the caller still fsyncs its entry. A file in the way fails the next step.
        with contextlib.suppress(FileExistsError):
            os.mkdir(made, DIR_MODE)


def _scan_dir(path: Path, name_prefix: str) -> list[Entry]:
    """Entries of one directory, in reverse key order (the caller pops from the end).

    A directory sorts as `name + '/'`, since every key below it starts with that: so "a-b" (a file)
    comes before "a/b" (a file in directory "a"), as in a flat object store.
    """
    try:
        with os.scandir(path) as entries:
            found = [
                (entry.name, entry.is_dir(follow_symlinks=False))
                for entry in entries
                if entry.name.startswith(name_prefix) and not entry.name.startswith(TEMP_PREFIX)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort(key=lambda item: item[0] + "/" if item[1] else item[0], reverse=True)
    return found


def _stat_files(directory: Path, key_prefix: str, names: list[str]) -> list[ObjectInfo]:
    infos = []
    for name in names:
        try:
            st = os.stat(directory / name, follow_symlinks=False)
        except FileNotFoundError:
            continue  # deleted since the directory was scanned
        if stat.S_ISREG(st.st_mode):
            infos.append(ObjectInfo(key_prefix + name, st.st_size, st.st_mtime_ns))
    return infos


def _unwatched(work: Callable[..., T]) -> Callable[..., T]:
    """`work` as one step: it takes no `Steps`, so the whole call has the step deadline."""

    def call(steps: Steps, *args: Any) -> T:
        return work(*args)

    return call


class LocalSink(Sink):
    """Objects as files under `root`; `check()` creates `root` (with its parents) if it is missing.

    Only `check()` creates the root: an operation that finds it gone later (an unmounted volume, say)
    fails with SinkUnavailable rather than writing to whatever lies beneath the mount point, or
    reporting an empty archive. Empty directories left behind by deletes are harmless: not objects.
    """

    min_segment_share = 1 / 8  # a write is an fsync or two: small segments keep acknowledgements quick

    def __init__(self, root: Path, *, deadlines: Deadlines = DEFAULT_DEADLINES) -> None:
        self._root = Path(root).absolute()
        self._deadlines = deadlines
        self._stuck: set[str] = set()  # keys whose abandoned operation is still running in a thread

    @property
    def root(self) -> Path:
        return self._root

    @property
    def url(self) -> str:
        return self._root.as_uri()

    def __repr__(self) -> str:
        return f"LocalSink({str(self._root)!r})"

    # -- keys and errors

    def _path(self, key: str) -> Path:
        validate_key(key, sink=self.url)
        if any(segment.startswith(TEMP_PREFIX) for segment in key.split("/")):
            raise InvalidKey(f"key segments starting with {TEMP_PREFIX!r} are reserved", sink=self.url, key=key)
        return self._root / key

    def _root_gone(self) -> SinkUnavailable | None:
        if self._root.is_dir():
            return None
        return SinkUnavailable("the sink's root directory is missing (unmounted? check() creates it)", sink=self.url)

    def _error(self, err: OSError, key: str | None, doing: str) -> SinkError:
        detail = f"{doing}: {err.strerror or err}"
        if err.errno in _DENIED:
            return SinkPermissionDenied(detail, sink=self.url, key=key)
        if err.errno in (errno.ENOTDIR, errno.EISDIR):
            # "a" and "a/b" cannot both exist on a filesystem; retrying will not change that.
            return SinkError(f"{detail} (the key clashes with an existing object or directory)", sink=self.url, key=key)
        if err.errno == errno.ENAMETOOLONG:
            return InvalidKey(detail, sink=self.url, key=key)
        if err.errno in _NO_SPACE:
            return self._no_space(err, key, doing, None)
        return SinkUnavailable(detail, sink=self.url, key=key)

    def _no_space(self, err: OSError, key: str | None, doing: str, needed: int | None) -> SinkUnavailable:
        """'no space left on <root>', with what is free (statvfs is cheap) and what the write needed."""
        facts = []
        try:
            st = os.statvfs(self._root)
            facts.append(f"{_size(st.f_bavail * st.f_frsize)} free")
        except OSError:
            pass
        if needed is not None:
            facts.append(f"the write needed {_size(needed)}")
        said = f"{err.strerror or os.strerror(err.errno or 0)}" + (f": {', '.join(facts)}" if facts else "")
        detail = f"{doing}: no space left on {self._root} ({said}); retrying until there is room"
        return SinkUnavailable(detail, sink=self.url, key=key)

    async def _run(self, key: str | None, doing: str, work: Callable[..., T], *args: Any, exclusive: bool = False) -> T:
        """`work(steps, *args)` on the worker pool, within the deadline of each step it reports.

        `exclusive` (writes and deletes) refuses to start while an abandoned operation on the same key
        is still running, so that a late rename can never land after a newer write of that key.
        """
        if exclusive and key in self._stuck:
            raise SinkUnavailable(
                f"{doing}: an earlier operation on this key is still stuck in the filesystem under {self._root}",
                sink=self.url,
                key=key,
            )
        steps = Steps(self._deadlines)
        future = _executor().submit(work, steps, *args)
        waiting = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=max(steps.deadline - time.monotonic(), 0.0))
                if done:
                    return waiting.result()
                if time.monotonic() >= steps.deadline:
                    raise SinkUnavailable(
                        f"{doing}: the filesystem under {self._root} made no progress for {steps.limit:g}s "
                        "(a stalled disk or mount?)",
                        sink=self.url,
                        key=key,
                    )
        except OSError as err:
            raise self._error(err, key, doing) from err
        finally:
            if not waiting.done():
                # Given up, or cancelled: the thread stops at its next step. Until it has, this key is busy.
                steps.abandoned = True
                if exclusive and key is not None:
                    self._stuck.add(key)
                    future.add_done_callback(lambda _: self._stuck.discard(key))
                waiting.cancel()  # nobody awaits the outcome now; a thread finishing late is ignored

    # -- writing

    async def put(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        path = self._path(key)
        await self._run(key, "writing", self._put_sync, key, path, data, if_absent, exclusive=True)

    def _put_sync(self, steps: Steps, key: str, path: Path, data: bytes, if_absent: bool) -> None:
        try:
            self._put_steps(steps, key, path, data, if_absent)
        except _GaveUp:
            return  # the caller has reported the failure already; the temp file is gone
        except OSError as err:
            if err.errno in _NO_SPACE:
                raise self._no_space(err, key, "writing", len(data)) from err
            raise

    def _put_steps(self, steps: Steps, key: str, path: Path, data: bytes, if_absent: bool) -> None:
        directory = path.parent
        created = _missing_dirs(directory, self._root)
        if created:
            if gone := self._root_gone():
                raise gone
            _make_dirs(created)
        temp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        steps.next()
        # os.open rather than mkstemp, whose mode 0600 would ignore a group the operator's umask allows.
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileNotFoundError:
            if gone := self._root_gone():
                raise gone from None
            raise
        try:
            try:
                view = memoryview(data)
                while view:
                    steps.next(min(len(view), WRITE_STEP))
                    view = view[os.write(fd, view[:WRITE_STEP]) :]
                steps.next(len(data))  # the fsync may have all of it still to write
                os.fsync(fd)
            finally:
                os.close(fd)
            steps.next()  # the last chance to give up: after the rename the object is there
            if if_absent:
                self._link(temp, path, key)
            else:
                os.replace(temp, path)
        finally:
            # After a rename there is nothing left to remove; after a link or a failure, the temp file.
            temp.unlink(missing_ok=True)
        _fsync_dir(directory)
        for made in created:
            _fsync_dir(made.parent)

    def _link(self, temp: Path, path: Path, key: str) -> None:
        try:
            # link() fails atomically when the name exists, where rename() would silently replace it.
            os.link(temp, path)
        except FileExistsError:
            raise ObjectExists("an object already exists under this key", sink=self.url, key=key) from None
        except OSError as err:
            if err.errno in _NO_HARD_LINKS:
                raise SinkConfigError(
                    f"the filesystem refused a hard link ({err.strerror}); conditional puts need them",
                    sink=self.url,
                    key=key,
                ) from err
            raise

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await self._run(key, "deleting", self._delete_sync, path, exclusive=True)

    def _delete_sync(self, steps: Steps, path: Path) -> None:
        try:
            path.unlink()
        except OSError as err:
            if err.errno in _NOT_AN_OBJECT:
                return
            raise
        _fsync_dir(path.parent)

    # -- reading

    async def get(self, key: str) -> bytes:
        path = self._path(key)

        def read(steps: Steps) -> bytes:
            with open(path, "rb") as file:
                steps.next(os.fstat(file.fileno()).st_size)
                return file.read()

        return await self._read(key, read)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        if length < 0:
            raise ValueError(f"length must not be negative, got {length}")
        path = self._path(key)

        def read(steps: Steps) -> bytes:
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                file.seek(max(size + start, 0) if start < 0 else start)
                steps.next(min(length, size))
                return file.read(length)

        return await self._read(key, read)

    async def _read(self, key: str, work: Callable[[Steps], bytes]) -> bytes:
        def read_or_explain(steps: Steps) -> bytes | SinkError:
            try:
                return work(steps)
            except OSError as err:
                if err.errno not in _NOT_AN_OBJECT:
                    raise
                steps.next()
                gone = self._root_gone()
                return gone or ObjectNotFound("no object under this key", sink=self.url, key=key)

        # OSErrors other than a missing object become SinkErrors in _run, as "reading".
        outcome = await self._run(key, "reading", read_or_explain)
        if isinstance(outcome, SinkError):
            raise outcome
        return outcome

    async def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)

        def stat_object(steps: Steps) -> ObjectInfo | None:
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError as err:
                if err.errno not in _NOT_AN_OBJECT:
                    raise
                if gone := self._root_gone():
                    raise gone from err
                return None
            return ObjectInfo(key, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None

        return await self._run(key, "reading metadata", stat_object)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        validate_key(prefix, sink=self.url, prefix=True)
        directory_key, slash, name_prefix = prefix.rpartition("/")
        directory_key += slash

        def scan_top(steps: Steps) -> list[Entry]:
            entries = _scan_dir(self._root / directory_key, name_prefix)
            if not entries and (gone := self._root_gone()):
                raise gone
            return entries

        # Depth-first, only below the directory the prefix points into; each level on the stack holds
        # one directory's sorted names, never the whole tree.
        stack: list[tuple[str, list[Entry]]] = [(directory_key, await self._run(None, "listing", scan_top))]
        while stack:
            key_prefix, entries = stack[-1]
            if not entries:
                stack.pop()
                continue
            if entries[-1][1]:
                sub_prefix = key_prefix + entries.pop()[0] + "/"
                sub_entries = await self._run(None, "listing", _unwatched(_scan_dir), self._root / sub_prefix, "")
                stack.append((sub_prefix, sub_entries))
                continue
            # The run of plain files before the next directory, stat'ed in one worker-thread call.
            names: list[str] = []
            while entries and not entries[-1][1] and len(names) < _STAT_BATCH:
                names.append(entries.pop()[0])
            directory = self._root / key_prefix
            for info in await self._run(None, "listing", _unwatched(_stat_files), directory, key_prefix, names):
                yield info

    # -- housekeeping

    async def check(self) -> None:
        """Create the root if needed, sweep stale temporary files, then write, read and delete a probe.

        Raises SinkConfigError if the root (or a parent) is not a directory, SinkPermissionDenied if
        it cannot be written.
        """
        await self._run(None, "creating the root directory", self._prepare_root)
        await self.cleanup_temporary()
        await super().check()

    def _prepare_root(self, steps: Steps) -> None:
        try:
            created = _missing_dirs(self._root, Path(self._root.anchor))
            _make_dirs(created)
            if not self._root.is_dir():
                raise SinkConfigError("the sink's root is not a directory", sink=self.url)
            for made in created:
                _fsync_dir(made.parent)
        except NotADirectoryError as err:
            raise SinkConfigError("a parent of the sink's root is not a directory", sink=self.url) from err

    async def cleanup_temporary(self, older_than: float = STALE_TEMP_AGE) -> int:
        """Remove `.tmp-*` files left by interrupted puts once untouched for `older_than` seconds
        (younger ones may belong to a put in progress); returns how many were removed."""

        def sweep(steps: Steps) -> int:
            cutoff = time.time_ns() - int(older_than * 1e9)
            removed = 0
            for directory, _, files in os.walk(self._root):
                steps.next()  # a step per directory: a large archive takes long, a stuck one makes no progress
                for name in files:
                    if not name.startswith(TEMP_PREFIX):
                        continue
                    path = Path(directory, name)
                    try:
                        if path.stat(follow_symlinks=False).st_mtime_ns <= cutoff:
                            path.unlink()
                            removed += 1
                    except FileNotFoundError:
                        pass  # its put finished or failed meanwhile
            return removed

        return await self._run(None, "removing temporary files", sweep)

    async def close(self) -> None:
        pass  # nothing is held open between calls
