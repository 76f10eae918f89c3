"""The units in systemd/: `systemd-analyze verify` passes on each, without a warning; both ask for what
a notify service needs and the same sandbox; and warren runs under that sandbox's system call rules
(SystemCallFilter= and MemoryDenyWriteExecute=, applied here with libseccomp as systemd would)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.seccomp_sandbox import libseccomp

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("warren-archive@.service", "warren-replay@.service")
INSTALLED_WARREN = "/opt/warren/bin/warren"  # where the README installs it
SANDBOX = Path(__file__).with_name("seccomp_sandbox.py")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian: apt-get install systemd)"
)


def settings(unit: str) -> list[tuple[str, str]]:
    """The unit's `Key=value` lines in order (keys repeat: EnvironmentFile=, SystemCallFilter=)."""
    pairs = []
    for line in (ROOT / "systemd" / unit).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def values(unit: str, key: str) -> list[str]:
    return [value for k, value in settings(unit) if k == key]


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_passes_without_a_warning(unit, tmp_path):
    # verify checks that ExecStart's program exists: this machine has warren where the venv is, not in /opt.
    text = (ROOT / "systemd" / unit).read_text()
    assert INSTALLED_WARREN in text
    (tmp_path / unit).write_text(text.replace(INSTALLED_WARREN, sys.executable))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr.strip()) == (0, ""), result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_is_a_notify_service_with_a_watchdog_restarts_and_a_state_directory(unit):
    want = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "User": "warren",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
    }
    assert {key: (values(unit, key) or [None])[-1] for key in want} == want
    assert values(unit, "StateDirectory")[0].startswith("warren/")
    assert values(unit, "SystemCallFilter")[0] == "@system-service"
    assert values(unit, "ExecStart")[0].startswith(INSTALLED_WARREN + " ")


def test_both_units_have_the_same_sandbox():
    def sandbox(unit: str) -> list[tuple[str, str]]:
        pairs = settings(unit)
        return pairs[[key for key, _ in pairs].index("User") :]

    assert sandbox(UNITS[0]) == sandbox(UNITS[1])


def test_the_replay_unit_keeps_the_target_off_the_command_line():
    (exec_start,) = values("warren-replay@.service", "ExecStart")
    assert "--target" not in exec_start and "--archive" not in exec_start  # read from WARREN_REPLAY_* instead


def expand(group: str) -> set[str]:
    """A system call group (@system-service, ...) as systemd defines it, names only."""
    assert SYSTEMD_ANALYZE is not None
    listing = subprocess.run(
        [SYSTEMD_ANALYZE, "syscall-filter", group], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if item.startswith("@"):
            names |= expand(item)
        elif item and not item.startswith("#"):
            names.add(item)
    return names


def allowed_syscalls(unit: str) -> set[str]:
    allowed: set[str] = set()
    for value in values(unit, "SystemCallFilter"):
        deny = value.startswith("~")
        groups = set().union(*(expand(g) if g.startswith("@") else {g} for g in value.removeprefix("~").split()))
        allowed = allowed - groups if deny else allowed | groups
    return allowed


CHILD = """
import ctypes, mmap, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("the sandbox is not in force: a writable, executable mapping was allowed")
except OSError:
    pass
callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)  # a libffi closure
assert callback(1) == 2
import google_crc32c, msgpack, uvloop, zstandard
from bridge.service_notify import Notifier
Notifier(sys.argv[1]).ready("ready under the sandbox")
from bridge.cli import main
sys.exit(main(["check", "--config", sys.argv[2]]))
"""


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@needs_systemd_analyze
@pytest.mark.skipif(libseccomp() is None, reason="libseccomp is not installed (Debian: apt-get install libseccomp2)")
def test_warren_runs_under_the_units_system_call_filter_and_memory_deny_write_execute(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.write_text("\n".join(sorted(allowed_syscalls(UNITS[0]))))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    port = closed_port()
    config = tmp_path / "warren.toml"
    config.write_text(
        f'[broker]\nuri = "amqp://guest:guest@127.0.0.1:{port}/%2F"\n'
        f'management-uri = "http://guest:guest@127.0.0.1:{port}"\n'
        f'[archive]\nsinks = ["{tmp_path / "archive"}"]\n[[source]]\nsrc-queue = "orders"\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            str(SANDBOX),
            str(allowed),
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / "notify"),
            str(config),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert notify.recv(4096) == b"READY=1\nSTATUS=ready under the sandbox"
    notify.close()
    # Nothing listens on the broker's port: `check` says so (exit 1), and the local sink is written to.
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"sink file://{tmp_path / 'archive'}: ok" in result.stdout, result.stdout
    assert "Connection refused" in result.stdout
    assert "Operation not permitted" not in result.stdout + result.stderr
