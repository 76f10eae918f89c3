"""Private RabbitMQ nodes from Debian's `rabbitmq-server`: own directory, own ports, own Erlang node name.

The demo starts one when no broker is given, and the test harness starts them so a test can kill -9,
pause, restart or remove its broker without touching anyone else's. Ports are picked free on loopback
at start; every port the node opens (AMQP, stream, management, Erlang distribution) is bound to
127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import LocalNodeError

RABBITMQ_BIN = Path(os.environ.get("WARREN_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
PLUGINS = ("rabbitmq_management", "rabbitmq_stream", "rabbitmq_shovel", "rabbitmq_shovel_management")
START_TIMEOUT = 120.0

_names = itertools.count(1)


def require_rabbitmq() -> None:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        raise LocalNodeError(
            f"rabbitmq-server is not installed ({RABBITMQ_BIN}/rabbitmq-server is missing): "
            "run `make setup`, or apt-get install -y rabbitmq-server"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class NodePorts:
    amqp: int
    stream: int
    management: int
    dist: int

    @classmethod
    def pick(cls) -> NodePorts:
        return cls(amqp=free_port(), stream=free_port(), management=free_port(), dist=free_port())


@dataclass
class LocalNode:
    """One private node. `start()` blocks until AMQP and the management API answer."""

    root: Path
    extra_conf: str = ""
    name: str = field(default_factory=lambda: f"warren-{os.getpid()}-{next(_names)}@localhost")
    ports: NodePorts = field(default_factory=NodePorts.pick)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def amqp_uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.ports.amqp}/%2F"

    @property
    def stream_uri(self) -> str:
        return f"rabbitmq-stream://guest:guest@127.0.0.1:{self.ports.stream}/%2F"

    @property
    def management_uri(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.ports.management}"

    @property
    def pid_file(self) -> Path:
        return self.root / "rabbitmq.pid"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq"),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_DIST_PORT=str(self.ports.dist),
            RABBITMQ_PID_FILE=str(self.pid_file),
            # The CLI tools reach the node over Erlang distribution; keep that on loopback too.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            HOME=str(self.root),
        )
        return env

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.ports
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{p.amqp}\n"
            f"management.tcp.port = {p.management}\n"
            "management.tcp.ip = 127.0.0.1\n"
            f"stream.listeners.tcp.1 = 127.0.0.1:{p.stream}\n"
            "stream.advertised_host = 127.0.0.1\n"
            f"stream.advertised_port = {p.stream}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n" + self.extra_conf
        )
        (self.root / "enabled_plugins").write_text("[" + ",".join(PLUGINS) + "].")

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run rabbitmqctl against this node; raises LocalNodeError with its stderr on failure."""
        try:
            out = subprocess.run(
                [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise LocalNodeError(f"rabbitmqctl {' '.join(args)} on {self.name} timed out after {timeout}s") from e
        if out.returncode != 0:
            raise LocalNodeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {out.stderr.strip()}")
        return out.stdout

    def start(self) -> LocalNode:
        require_rabbitmq()
        self.write_config()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
            env=self.env(),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise LocalNodeError(f"rabbitmq-server -detached for {self.name} failed: {result.stderr.strip()}")
        self._await_startup()
        return self

    def _await_startup(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:  # the node registers with epmd a moment after -detached returns
            try:
                self.ctl("await_startup", "--timeout", str(int(START_TIMEOUT)), timeout=START_TIMEOUT + 30)
                break
            except LocalNodeError as e:
                last_error = e
                time.sleep(0.5)
        else:
            raise LocalNodeError(
                f"{self.name} did not start within {START_TIMEOUT}s: {last_error}; see the logs in {self.root}/log"
            )
        while time.monotonic() < deadline:  # the management API answers a little after the node
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.ports.management}/api/overview", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # 401: it answers
            except OSError:
                time.sleep(0.3)
        raise LocalNodeError(f"management API of {self.name} did not come up on port {self.ports.management}")

    def beam_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.beam_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """Orderly shutdown; falls back to kill -9 if the node does not stop."""
        if not self.is_running():
            return
        try:
            self.ctl("stop", timeout=60)
        except LocalNodeError:
            self.kill()

    def kill(self) -> None:
        """kill -9 the node's Erlang VM, as a crash would, and wait until it is gone."""
        pid = self.beam_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a paused VM must be able to die
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: sockets stay open but nothing is answered, as with a hung host."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        pid = self.beam_pid()
        if pid is None:
            raise LocalNodeError(f"{self.name} is not running")
        os.kill(pid, sig)

    def restart(self) -> LocalNode:
        """Stop (or, if already killed, just) start again on the same ports and data directory."""
        self.stop()
        return self.start()

    def destroy(self) -> None:
        self.kill() if self.is_paused() else self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def is_paused(self) -> bool:
        pid = self.beam_pid()
        if pid is None:
            return False
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return state == "T"
