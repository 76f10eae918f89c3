"""Driving `warren replay` as an operator would, for the replayer's integration and fault tests.

The replayer runs as a subprocess of the CLI; pika is the witness on the target broker, and the
target's management API says what exists there (queue types, arguments). Every wait polls with a
deadline (`wait_until`); nothing sleeps to wait for something to happen.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pika.spec

from bridge.harness.nodes import LocalNode, RabbitMQInstall
from tests.integration.archiving import REPO, warren
from tests.polling import wait_until

# ---- private target nodes ----------------------------------------------------------------------


@contextlib.contextmanager
def private_node(root: Path, install: RabbitMQInstall) -> Iterator[LocalNode]:
    """A node of the module's own (the replay target), removed afterwards."""
    node = LocalNode(root, install=install)
    node.start()
    try:
        yield node
    finally:
        node.destroy()


def vhost_uri(node: LocalNode, vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.ports.amqp}/{quote(vhost, safe='')}"


def stream_vhost_uri(node: LocalNode, vhost: str) -> str:
    return f"rabbitmq-stream://guest:guest@127.0.0.1:{node.ports.stream}/{quote(vhost, safe='')}"


class Management:
    """The node's HTTP API, with urllib (independent of warren's own management client)."""

    def __init__(self, node: LocalNode) -> None:
        self.base = f"http://127.0.0.1:{node.ports.management}/api"
        self.auth = "Basic " + base64.b64encode(b"guest:guest").decode()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self.auth)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/queues/{quote(vhost, safe='')}")

    def exchanges(self, vhost: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/exchanges/{quote(vhost, safe='')}")

    def create_vhost(self, vhost: str) -> str:
        """An empty vhost the guest user may use: a target as empty as a fresh broker."""
        v = quote(vhost, safe="")
        self.request("PUT", f"/vhosts/{v}", {})
        self.request("PUT", f"/permissions/{v}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        return vhost


# ---- times -------------------------------------------------------------------------------------


def rfc3339(ns: int) -> str:
    """RFC 3339 in UTC with microseconds, as `--at`, `--since` and `--until` take it."""
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).replace(microsecond=(ns // 1000) % 1_000_000)
    return t.isoformat().replace("+00:00", "Z")


def parse_rfc3339(text: str) -> int:
    t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


def instant_between() -> int:
    """A time T strictly after everything captured so far and strictly before anything captured next.

    Stream records carry the broker's chunk timestamp in milliseconds, so T is taken and then the
    clock is let pass into the next millisecond (and a little more) before anything else is published.
    """
    t = time.time_ns()
    wait_until(lambda: time.time_ns() > t + 3_000_000, timeout=1, what="the clock to pass T", every=0.001)
    return t


# ---- the archive, as `warren ls --json` reports it ----------------------------------------------


def archived_records(sink: Path) -> dict[str, int]:
    """Records per source name, from `warren ls --json` ({} while the archive does not exist yet)."""
    if not sink.exists():
        return {}
    result = warren("ls", str(sink), "--json", timeout=60)
    if result.returncode != 0:
        return {}
    return {row["source"]: int(row["records"]) for row in json.loads(result.stdout)}


def wait_archived(sink: Path, want: dict[str, int], *, timeout: float = 60) -> dict[str, int]:
    def enough() -> dict[str, int] | None:
        got = archived_records(sink)
        return got if all(got.get(name, 0) >= count for name, count in want.items()) else None

    got = wait_until(enough, timeout=timeout, what=f"{want} in the archive", every=0.2)
    assert got is not None
    return got


# ---- the replayer, as a subprocess of the CLI --------------------------------------------------


def replay(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`warren replay ARGS` to completion: exit code, stdout (the summary) and stderr (the logs)."""
    return warren("replay", *args, timeout=timeout)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"


@dataclass
class ReplayProcess:
    """One `warren replay` running in the background; stdout and stderr go to files so it never blocks."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"warren replay did not exit within {timeout}s:\n{self.describe()}") from None

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.proc.kill()  # Popen's own: never signals a reaped, possibly reused pid
        self.proc.wait(30)

    def describe(self) -> str:
        return f"exit {self.proc.poll()}\n--- stdout\n{self.stdout()}\n--- stderr\n{self.stderr()[-4000:]}"


@dataclass
class Replayers:
    """Starts `warren replay` processes in the background and makes sure none outlives the test."""

    workdir: Path
    started: list[ReplayProcess] = field(default_factory=list)

    def __enter__(self) -> Replayers:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.started:
            if process.running():
                process.kill()

    def start(self, *args: str) -> ReplayProcess:
        n = len(self.started)
        out, err = self.workdir / f"replay-{n}.out", self.workdir / f"replay-{n}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "replay", *args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        process = ReplayProcess(proc, out, err)
        self.started.append(process)
        return process


# ---- the summary `warren replay` prints ------------------------------------------------------------

_SUMMARY = re.compile(r"^(done  |FAILED) (queue|stream) '(?P<name>[^']*)' in vhost '[^']*' -> .*$", re.M)
_DRY = re.compile(
    r"^would replay (?P<kind>queue|stream) '(?P<name>[^']*)' in vhost '[^']*': (?P<records>\d+) messages, "
    r"(?P<bytes>\d+) bytes, captured (?P<span>[^;\n]*)(?P<extra>.*)$",
    re.M,
)


@dataclass(frozen=True)
class SummaryLine:
    """One source's part of the summary: its first line, and the indented lines that follow it."""

    failed: bool
    text: str

    @property
    def replayed(self) -> int:
        return int(_field(self.text, r": (\d+) replayed"))

    @property
    def in_doubt(self) -> int:
        m = re.search(r"; (\d+) were in doubt", self.text)
        return int(m[1]) if m else 0

    @property
    def duplicates_skipped(self) -> int:
        return int(_field(self.text, r", (\d+) duplicates skipped"))

    @property
    def possible_duplicates(self) -> int:
        m = re.search(r"; (\d+) possible duplicates kept", self.text)
        return int(m[1]) if m else 0


def _field(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in summary line {text!r}"
    return m[1]


def summary(stdout: str) -> dict[str, SummaryLine]:
    """The summary per source name."""
    lines: dict[str, SummaryLine] = {}
    for m in _SUMMARY.finditer(stdout):
        rest = stdout[m.end() :].split("\n")[1:]
        details = []
        for line in rest:
            if not line.startswith("       "):
                break
            details.append(line)
        lines[m["name"]] = SummaryLine(m[1] == "FAILED", "\n".join([m[0], *details]))
    return lines


@dataclass(frozen=True)
class DryLine:
    records: int
    bytes: int
    first_ns: int | None
    last_ns: int | None


def dry_summary(stdout: str) -> dict[str, DryLine]:
    out = {}
    for m in _DRY.finditer(stdout):
        first = last = None
        if m["span"] != "-":
            a, b = m["span"].split(" .. ")
            first, last = parse_rfc3339(a), parse_rfc3339(b)
        out[m["name"]] = DryLine(int(m["records"]), int(m["bytes"]), first, last)
    return out


def read_state(path: Path) -> dict[str, dict[str, int]]:
    """The replay state file ({} while it does not exist yet, or is being replaced)."""
    try:
        return json.loads(path.read_text())["sources"]
    except (FileNotFoundError, ValueError, KeyError):
        return {}


# ---- the witness on the target ------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    exchange: str
    routing_key: str
    properties: pika.spec.BasicProperties
    body: bytes

    @property
    def raw_properties(self) -> bytes:
        """The property section re-encoded by pika: equal bytes mean equal values of equal AMQP types."""
        return b"".join(self.properties.encode())


def drain_queue(uri: str, queue: str, *, prefetch: int = 1000, timeout: float = 120) -> list[Received]:
    """Consume and acknowledge everything `queue` holds, in order.

    Call it once whatever fills the queue has finished (a replay that exited): the depth it reports
    then is exact, and the queue must be empty afterwards.
    """
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        channel = connection.channel()
        expected = channel.queue_declare(queue, passive=True).method.message_count
        channel.basic_qos(prefetch_count=prefetch)
        got: list[Received] = []
        deadline = time.monotonic() + timeout
        if expected:
            for method, properties, body in channel.consume(queue, inactivity_timeout=1):
                if method is None:
                    assert time.monotonic() < deadline, f"{len(got)} of {expected} messages of {queue} arrived"
                    continue
                got.append(Received(method.exchange, method.routing_key, properties, body))
                if len(got) == expected or len(got) % (prefetch // 2) == 0:
                    channel.basic_ack(method.delivery_tag, multiple=True)
                if len(got) == expected:
                    break
            channel.cancel()
        left = channel.queue_declare(queue, passive=True).method.message_count
        assert left == 0, f"{left} messages arrived in {queue} while it was drained"
        return got
    finally:
        connection.close()


def read_stream(uri: str, stream: str, *, expected: int, idle: float = 1.0, timeout: float = 120) -> list[Received]:
    """A stream's messages from its first offset: at least `expected` of them, then until nothing more
    arrives for `idle` seconds (so that any extra copies are seen too)."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    deadline = time.monotonic() + timeout
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)  # a stream consumer needs a prefetch
        got: list[Received] = []
        for method, properties, body in channel.consume(
            stream, arguments={"x-stream-offset": "first"}, inactivity_timeout=idle
        ):
            if method is None:
                if len(got) >= expected or time.monotonic() > deadline:
                    break
                continue
            got.append(Received(method.exchange, method.routing_key, properties, body))
            if len(got) % 500 == 0:
                channel.basic_ack(method.delivery_tag, multiple=True)
        channel.cancel()
        return got
    finally:
        connection.close()


def depth(uri: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def declare(uri: str, declare_with: Callable[[Any], None]) -> None:
    """Run declarations on a short-lived pika channel of the target."""
    connection = pika.BlockingConnection(pika.URLParameters(uri))
    try:
        declare_with(connection.channel())
    finally:
        connection.close()
