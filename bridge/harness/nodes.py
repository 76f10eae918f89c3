"""Private RabbitMQ nodes for tests and the demo: own directory, own ports, own Erlang node name.

Two installs can be used side by side: Debian 12's rabbitmq-server (3.10, the host's own) and Debian
13's (4.0, installed by `make setup` into a Debian 13 tree under .tools/trixie and run there with
chroot). The demo starts one node when no broker is given; the test harness starts them so a test
can kill -9, pause, restart or remove its broker without touching anyone else's. Ports are picked
free on loopback at start; every port a node opens (AMQP, stream, management, Erlang distribution)
is bound to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import EXIT_BROKER, WarrenError

PLUGINS = ("rabbitmq_management", "rabbitmq_stream", "rabbitmq_shovel", "rabbitmq_shovel_management")
START_TIMEOUT = 120.0
DEBIAN_BIN = Path("/usr/lib/rabbitmq/bin")
TOOLS = Path(os.environ.get("WARREN_TOOLS", Path(__file__).resolve().parents[2] / ".tools"))

_names = itertools.count(1)


class LocalNodeError(WarrenError):
    """A private RabbitMQ node could not be started or controlled."""

    exit_code = EXIT_BROKER


@dataclass(frozen=True)
class RabbitMQInstall:
    """One installed RabbitMQ: the host's own, or one in a Debian tree run with chroot."""

    version: str
    bin_dir: Path  # as seen by the node (inside `chroot` when there is one)
    chroot: Path | None = None
    setup_hint: str = "run `make setup`"

    def host_path(self, inner: Path) -> Path:
        return self.chroot / inner.relative_to("/") if self.chroot else inner

    @property
    def installed(self) -> bool:
        return (self.host_path(self.bin_dir) / "rabbitmq-server").exists()

    def command(self, tool: str) -> list[str]:
        """How to run one of the install's tools: a chrooted one in a mount namespace of its own."""
        inner = str(self.bin_dir / tool)
        if self.chroot is None:
            return [inner]
        namespace = ["unshare", "--mount", "--propagation", "private", "--"]
        return [*namespace, "sh", "-c", _IN_TREE, "sh", str(self.chroot), inner]

    def nodes_dir(self) -> Path | None:
        """Where a node's files must live so that the node sees them too (None: anywhere)."""
        return self.chroot / "var/tmp/warren-nodes" if self.chroot else None

    def prepare(self) -> None:
        """Check that the install is there; for a chrooted one, make the place where its tree's own path
        is mounted inside it (see _IN_TREE)."""
        require(self)
        if self.chroot is None:
            return
        inner_path = self.chroot / self.chroot.relative_to("/")
        if inner_path.is_symlink():  # how earlier trees did it: a link to "/", which tree walkers follow out
            inner_path.unlink()
        inner_path.mkdir(parents=True, exist_ok=True)


# A chrooted tool needs /proc (the Erlang VM reads it) and host paths of node files meaning the same
# inside the tree, so its own path is bind-mounted there. Both mounts live in a mount namespace of the
# command's own and end with it and its daemons: nothing stays mounted in the project's tree on the
# host, where a /proc mount outlived every test run and broke whatever walked or removed the tree after.
_IN_TREE = (
    'root=$1; shift; mount -t proc proc "$root/proc" && mkdir -p "$root$root" '
    '&& mount --bind "$root" "$root$root" && exec chroot "$root" "$@"'
)


INSTALLS = {
    "3.10": RabbitMQInstall(
        "3.10",
        Path(os.environ.get("WARREN_RABBITMQ_BIN", DEBIAN_BIN)),
        setup_hint="run `make setup`, or apt-get install -y rabbitmq-server",
    ),
    # Debian 13 (trixie) carries 4.0.5 on Erlang 27; `make setup` debootstraps it into .tools/trixie.
    "4.0": RabbitMQInstall("4.0", DEBIAN_BIN, chroot=TOOLS / "trixie"),
}
DEFAULT_VERSION = "3.10"


def install_for(version: str) -> RabbitMQInstall:
    try:
        return INSTALLS[version]
    except KeyError:
        raise LocalNodeError(f"no RabbitMQ {version!r} here: choose from {', '.join(INSTALLS)}") from None


def require(install: RabbitMQInstall) -> None:
    if not install.installed:
        where = install.host_path(install.bin_dir) / "rabbitmq-server"
        raise LocalNodeError(f"RabbitMQ {install.version} is not installed ({where} is missing): {install.setup_hint}")


def require_rabbitmq(version: str = DEFAULT_VERSION) -> None:
    require(install_for(version))


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports, below the kernel's ephemeral range.

    A port from bind(("127.0.0.1", 0)) comes from the ephemeral range, where every outgoing
    connection on the machine (the brokers' own, the tests' clients) also takes its local port: a
    node started, or restarted, a moment later could find its port taken. Below that range only
    explicit binds compete, so a random pick there that binds now stays free. All are held open until
    all are chosen, so none is picked twice.
    """
    low, _ = _ephemeral_range()
    if low - _LOWEST_PORT < 1000:
        return _kernel_picked_ports(count)
    chosen: list[int] = []
    with contextlib.ExitStack() as held:
        for port in _rng.sample(range(_LOWEST_PORT, low), min(low - _LOWEST_PORT, 200 + count)):
            s = held.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    return _kernel_picked_ports(count)


_LOWEST_PORT = 20000  # above the well-known and most registered services' ports
_rng = random.Random()  # seeded from the OS: workers and processes pick independently


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _kernel_picked_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def free_port() -> int:
    return free_ports(1)[0]


@dataclass(frozen=True)
class NodePorts:
    amqp: int
    stream: int
    management: int
    dist: int

    @classmethod
    def pick(cls) -> NodePorts:
        amqp, stream, management, dist = free_ports(4)
        return cls(amqp=amqp, stream=stream, management=management, dist=dist)


@dataclass
class LocalNode:
    """One private node. `start()` blocks until AMQP and the management API answer.

    With a chrooted install the node's files live inside its tree (`root` then names a directory
    there, not the one given), since the node cannot see outside it.
    """

    root: Path
    extra_conf: str = ""
    install: RabbitMQInstall = field(default_factory=lambda: install_for(DEFAULT_VERSION))
    name: str = field(default_factory=lambda: f"warren-{os.getpid()}-{next(_names)}@localhost")
    ports: NodePorts = field(default_factory=NodePorts.pick)
    tls: bool = False  # also listen with TLS (AMQP, streams, management), with a certificate of tls.py
    tls_ports: NodePorts | None = None  # amqp, stream and management over TLS, when `tls`
    cookie: str | None = None  # the Erlang cookie, the same for the nodes of a cluster (form_cluster)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        nodes_dir = self.install.nodes_dir()
        if nodes_dir is not None and not self.root.resolve().is_relative_to(nodes_dir.resolve()):
            self.root = nodes_dir / self.name.split("@")[0]

    @property
    def version(self) -> str:
        return self.install.version

    @property
    def amqp_uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.ports.amqp}/%2F"

    @property
    def tls_ca(self) -> Path:
        return self.root / "tls" / "ca.pem"

    def tls_uris(self) -> tuple[str, str, str]:
        """amqps://, rabbitmq-stream+tls:// and https:// URIs of the node, verifying its certificate."""
        assert self.tls_ports is not None, "a node started with tls=True"
        p, ca = self.tls_ports, f"cacertfile={self.tls_ca}"
        return (
            f"amqps://guest:guest@localhost:{p.amqp}/%2F?{ca}",
            f"rabbitmq-stream+tls://guest:guest@localhost:{p.stream}/%2F?{ca}",
            f"https://guest:guest@localhost:{p.management}?{ca}",
        )

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
            "log.file.level = info\n" + self._tls_conf() + self.extra_conf
        )
        (self.root / "enabled_plugins").write_text("[" + ",".join(PLUGINS) + "].")
        if self.cookie is not None:
            cookie = self.root / ".erlang.cookie"  # HOME is the node's root
            with contextlib.suppress(FileNotFoundError):
                cookie.chmod(0o600)
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)

    def _tls_conf(self) -> str:
        if not self.tls:
            return ""
        from bridge.harness.tls import make_certificates  # cryptography: a test dependency, not warren's

        files = make_certificates(self.root / "tls")
        if self.tls_ports is None:
            amqps, streams, https, _ = free_ports(4)
            self.tls_ports = NodePorts(amqp=amqps, stream=streams, management=https, dist=0)
        p = self.tls_ports
        options = f"cacertfile = {files.ca}\n{{0}}.certfile = {files.cert}\n{{0}}.keyfile = {files.key}\n"
        return (
            f"listeners.ssl.default = 127.0.0.1:{p.amqp}\n"
            f"ssl_options.{options.format('ssl_options')}"
            "ssl_options.verify = verify_none\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
            f"stream.listeners.ssl.1 = 127.0.0.1:{p.stream}\n"
            f"stream.advertised_tls_port = {p.stream}\n"
            f"management.ssl.port = {p.management}\n"
            "management.ssl.ip = 127.0.0.1\n"
            f"management.ssl.{options.format('management.ssl')}"
        )

    def join(self, first: LocalNode) -> None:
        """Join the cluster of `first` (both made with the same `cookie`)."""
        self.ctl("stop_app")
        self.ctl("join_cluster", first.name)
        self.ctl("start_app")
        self.ctl("await_startup")

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """Run rabbitmqctl against this node; raises LocalNodeError with its stderr on failure."""
        try:
            out = subprocess.run(
                [*self.install.command("rabbitmqctl"), "-n", self.name, *args],
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
        """Start the node; if a port it was given was taken meanwhile, on fresh ones (once more)."""
        try:
            return self._start()
        except LocalNodeError:
            if "eaddrinuse" not in self.log_errors(lines=50):
                raise
        self.kill()
        self.ports = NodePorts.pick()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.root / "log")
        return self._start()

    def _start(self) -> LocalNode:
        self.install.prepare()
        self.write_config()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        result = subprocess.run(
            [*self.install.command("rabbitmq-server"), "-detached"],
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
        # The node writes its pid file once it has registered with epmd, a moment after -detached
        # returns; asked before that, rabbitmqctl fails, and each try is an Erlang VM's start (a second
        # of CPU), so the cheap look comes first.
        while not self.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        while time.monotonic() < deadline:
            try:
                self.ctl("await_startup", "--timeout", str(int(START_TIMEOUT)), timeout=START_TIMEOUT + 30)
                break
            except LocalNodeError as e:
                last_error = e
                time.sleep(0.5)
        else:
            raise LocalNodeError(
                f"{self.name} did not start within {START_TIMEOUT}s: {last_error}; its log ends: {self.log_errors()}"
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

    def log_errors(self, lines: int = 5) -> str:
        """The node's last error lines, for a failure message (its directory goes when the test ends)."""
        found = []
        for log_file in sorted((self.root / "log").glob("*.log")):
            found += [line.strip() for line in log_file.read_text(errors="replace").splitlines() if "[error]" in line]
        return " | ".join(found[-lines:]) or f"(no errors logged in {self.root}/log)"

    def beam_pid(self) -> int | None:
        """The node's Erlang VM, or None once it is gone.

        A killed node leaves its pid file behind, and with pid_max at 32768 a busy test run reuses that
        number within minutes; signalling it then would hit whatever process holds it now (CI's own
        runner, once). So a pid counts only while its command line still names this node's home, its
        root directory.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if str(self.root).encode() in command_line.split(b"\0") else None

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
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

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
        """Remove the node, data and all. Nothing of it is kept, so it is killed rather than stopped in
        order: an orderly stop costs a rabbitmqctl VM and the node's shutdown, seconds of CPU a node
        on a two-core test host."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
