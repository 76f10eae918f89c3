"""What only the local filesystem sink promises: crash safety, temporary files, errno mapping, its root."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import sinks.local
from protocol.loop import run
from sinks import (
    InvalidKey,
    LocalSink,
    ObjectNotFound,
    SinkConfigError,
    SinkError,
    SinkPermissionDenied,
    SinkUnavailable,
)
from sinks.deadlines import Deadlines

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def local(tmp_path: Path) -> LocalSink:
    sink = LocalSink(tmp_path / "archive")
    run(sink.check())
    return sink


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


async def keys_of(sink: LocalSink, prefix: str) -> list[str]:
    return [info.key async for info in sink.list(prefix)]


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# -- crash safety


@pytest.mark.parametrize("if_absent", [False, True], ids=["replace", "link"])
def test_put_failing_at_the_final_rename_leaves_the_old_object_and_no_temporary_file(
    local: LocalSink, monkeypatch: pytest.MonkeyPatch, if_absent: bool
):
    run(local.put("seg/a", b"old"))

    def fail(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sinks.local.os, "replace", fail)
    monkeypatch.setattr(sinks.local.os, "link", fail)
    key = "seg/b" if if_absent else "seg/a"
    with pytest.raises(SinkUnavailable) as caught:
        run(local.put(key, b"new", if_absent=if_absent))
    monkeypatch.undo()

    assert caught.value.retryable and caught.value.key == key
    assert files_under(local.root) == ["seg/a"]
    assert run(local.get("seg/a")) == b"old"


def test_a_writer_killed_mid_write_never_leaves_a_partial_object(local: LocalSink):
    run(local.put("seg/big", b"previous version"))
    # The child writes half of a large object, says so, then hangs until it is killed with SIGKILL.
    child = textwrap.dedent(
        f"""
        import asyncio, os, sys, time
        from pathlib import Path
        from sinks.local import LocalSink

        real_write = os.write

        def write_half_then_hang(fd, data):
            if len(data) < 1 << 20:
                return real_write(fd, data)
            real_write(fd, data[: len(data) // 2])
            print("half written", flush=True)
            time.sleep(600)

        os.write = write_half_then_hang
        asyncio.run(LocalSink(Path({str(local.root)!r})).put("seg/big", b"x" * (8 << 20)))
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as writer:
        try:
            line = writer.stdout.readline()  # type: ignore[union-attr]
        finally:
            writer.send_signal(signal.SIGKILL)
            _, stderr = writer.communicate()
    assert line == "half written\n", stderr
    assert writer.returncode == -signal.SIGKILL

    leftovers = [name for name in files_under(local.root) if name.startswith("seg/.tmp-")]
    assert len(leftovers) == 1, files_under(local.root)  # the crash did happen mid-write
    assert 0 < (local.root / leftovers[0]).stat().st_size < 8 << 20  # written in steps: some of it
    assert run(local.get("seg/big")) == b"previous version"
    assert run(keys_of(local, "")) == ["seg/big"]
    assert run(local.cleanup_temporary(older_than=0)) == 1
    assert files_under(local.root) == ["seg/big"]


def test_new_directories_are_fsynced_up_to_the_root(local: LocalSink, monkeypatch: pytest.MonkeyPatch):
    synced: list[Path] = []
    real_fsync_dir = sinks.local._fsync_dir
    monkeypatch.setattr(sinks.local, "_fsync_dir", lambda path: (synced.append(path), real_fsync_dir(path)))
    run(local.put("x/y/z/seg", b"data"))
    root = local.root
    assert set(synced) == {root / "x/y/z", root / "x/y", root / "x", root}


# -- temporary files


def test_list_never_shows_temporary_files(local: LocalSink):
    run(local.put("seg/a", b"1"))
    (local.root / "seg/.tmp-0123abcd").write_bytes(b"partial")
    (local.root / ".tmp-top").write_bytes(b"partial")
    assert run(keys_of(local, "")) == ["seg/a"]
    assert run(keys_of(local, "seg/.tmp")) == []
    assert run(local.head("seg/a")) is not None


def test_cleanup_temporary_removes_stale_temporary_files_only(local: LocalSink):
    run(local.put("a/b/seg", b"object"))
    stale = [local.root / ".tmp-stale", local.root / "a/b/.tmp-stale"]
    fresh = local.root / "a/.tmp-fresh"
    for path in [*stale, fresh]:
        path.write_bytes(b"partial")
    for path in stale:
        age(path, 120)
    assert run(local.cleanup_temporary()) == 2
    assert files_under(local.root) == ["a/.tmp-fresh", "a/b/seg"]


def test_check_sweeps_stale_temporary_files(local: LocalSink):
    stale = local.root / ".tmp-from-a-crash"
    stale.write_bytes(b"partial")
    age(stale, 3600)
    run(local.check())
    assert not stale.exists()


def test_keys_with_a_temporary_file_name_are_rejected(local: LocalSink):
    with pytest.raises(InvalidKey):
        run(local.put("seg/.tmp-lookalike", b"x"))


# -- errors


@pytest.mark.parametrize(
    ("code", "expected", "retryable"),
    [
        (errno.EACCES, SinkPermissionDenied, False),
        (errno.EPERM, SinkPermissionDenied, False),
        (errno.EROFS, SinkPermissionDenied, False),
        (errno.ENOSPC, SinkUnavailable, True),
        (errno.EIO, SinkUnavailable, True),
        (errno.EDQUOT, SinkUnavailable, True),
    ],
)
def test_os_errors_become_typed_sink_errors(
    local: LocalSink, monkeypatch: pytest.MonkeyPatch, code: int, expected: type[SinkError], retryable: bool
):
    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(sinks.local.os, "open", refuse)
    with pytest.raises(expected) as caught:
        run(local.put("seg/a", b"x"))
    assert caught.value.retryable is retryable
    assert isinstance(caught.value.__cause__, OSError)
    assert os.strerror(code) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes, so chmod cannot deny it access")
def test_a_read_only_root_is_permission_denied(tmp_path: Path):
    root = tmp_path / "archive"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(SinkPermissionDenied):
            run(LocalSink(root).check())
    finally:
        root.chmod(0o700)


def test_a_key_below_an_existing_object_is_a_permanent_error(local: LocalSink):
    run(local.put("a", b"object"))
    with pytest.raises(SinkError) as caught:
        run(local.put("a/b", b"cannot live inside a file"))
    assert not caught.value.retryable
    assert run(local.get("a")) == b"object"


# -- the root


def test_check_creates_a_missing_root_with_its_parents(tmp_path: Path):
    sink = LocalSink(tmp_path / "not" / "yet" / "there")
    run(sink.check())
    assert sink.root.is_dir()
    assert list(sink.root.rglob("*")) == [sink.root / "_warren"]  # the probe is gone, its directory stays


def test_check_on_a_root_that_is_a_file_is_a_config_error(tmp_path: Path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SinkConfigError, match="not a directory"):
        run(LocalSink(tmp_path / "file").check())
    with pytest.raises(SinkConfigError, match="not a directory"):
        run(LocalSink(tmp_path / "file" / "archive").check())


def test_operations_after_the_root_vanishes_fail_instead_of_recreating_it(local: LocalSink):
    run(local.put("seg/a", b"x"))
    shutil.rmtree(local.root)
    for attempt in (
        local.put("seg/b", b"x"),
        local.get("seg/a"),
        local.get_range("seg/a", -4, 4),
        local.head("seg/a"),
        keys_of(local, ""),
        keys_of(local, "seg/"),
    ):
        with pytest.raises(SinkUnavailable, match="root directory is missing"):
            run(attempt)
    assert not local.root.exists()


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    sink = LocalSink(Path("archive"))
    assert sink.root == tmp_path / "archive"
    assert sink.url == (tmp_path / "archive").as_uri()


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o640, 0o750), (0o077, 0o600, 0o700)])
def test_objects_are_never_world_readable_and_the_umask_narrows_further(
    local: LocalSink, umask: int, file_mode: int, dir_mode: int
):
    previous = os.umask(umask)
    try:
        run(local.put("source/2026/seg", b"x"))
    finally:
        os.umask(previous)
    assert (local.root / "source/2026/seg").stat().st_mode & 0o777 == file_mode
    assert (local.root / "source/2026").stat().st_mode & 0o777 == dir_mode
    assert (local.root / "source").stat().st_mode & 0o777 == dir_mode


def test_get_of_a_missing_key_in_an_existing_root_is_not_found(local: LocalSink):
    with pytest.raises(ObjectNotFound):
        run(local.get("seg/a"))


# -- a stalled disk, a full disk


def test_a_stalled_fsync_fails_the_put_within_its_deadline_and_the_key_stays_busy_until_the_thread_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sink = LocalSink(tmp_path / "archive", deadlines=Deadlines(connect=1.0, stall=0.3, min_rate=1 << 30))
    run(sink.check())
    disk_back = threading.Event()
    real_fsync = os.fsync

    def hanging_fsync(fd: int) -> None:
        disk_back.wait(30)  # a dead NFS server, until the test brings it back
        real_fsync(fd)

    monkeypatch.setattr(sinks.local.os, "fsync", hanging_fsync)
    began = time.monotonic()
    with pytest.raises(SinkUnavailable) as caught:
        run(sink.put("seg/a", b"segment bytes"))
    assert time.monotonic() - began < 2
    assert caught.value.retryable and caught.value.key == "seg/a"
    assert f"writing: the filesystem under {sink.root} made no progress for 0.3s" in str(caught.value)

    # While the abandoned thread still runs, a retry of that key fails at once instead of racing it.
    with pytest.raises(SinkUnavailable, match="still stuck"):
        run(sink.put("seg/a", b"segment bytes"))

    disk_back.set()
    deadline = time.monotonic() + 10
    while "seg/a" in sink._stuck:
        assert time.monotonic() < deadline, "the abandoned put never gave up"
        time.sleep(0.01)
    # It gave up before the rename: no object, no temporary file.
    assert files_under(sink.root) == []
    monkeypatch.setattr(sinks.local.os, "fsync", real_fsync)
    run(sink.put("seg/a", b"segment bytes"))
    assert run(sink.get("seg/a")) == b"segment bytes"


def test_a_full_disk_is_retryable_says_where_and_how_much_and_leaves_no_temporary_file(
    local: LocalSink, monkeypatch: pytest.MonkeyPatch
):
    real_write = os.write
    full = True

    def write_some_then_fill_up(fd: int, data: bytes) -> int:
        if full and os.fstat(fd).st_size >= 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(sinks.local.os, "write", write_some_then_fill_up)
    data = os.urandom(3 << 20)
    with pytest.raises(SinkUnavailable) as caught:
        run(local.put("seg/a", data))
    assert caught.value.retryable
    message = str(caught.value)
    assert f"no space left on {local.root} (No space left on device: " in message
    assert " free, the write needed 3.0 MiB); retrying until there is room" in message
    assert files_under(local.root) == []  # the partial temporary file is gone

    full = False  # space is back: the same put succeeds
    run(local.put("seg/a", data))
    assert run(local.get("seg/a")) == data


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_on_a_full_tmpfs_a_put_fails_retryably_without_leftovers_and_succeeds_once_there_is_room(tmp_path: Path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    try:
        sink = LocalSink(mount_point / "archive")
        run(sink.check())
        filler = mount_point / "filler"
        filler.write_bytes(os.urandom(512 << 10))
        data = os.urandom(768 << 10)
        with pytest.raises(SinkUnavailable) as caught:
            run(sink.put("seg/a", data))
        assert caught.value.retryable
        assert f"no space left on {sink.root}" in str(caught.value)
        assert "the write needed 768.0 KiB" in str(caught.value)
        assert files_under(sink.root) == []

        filler.unlink()
        run(sink.put("seg/a", data))
        assert run(sink.get("seg/a")) == data
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
