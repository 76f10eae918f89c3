"""`warren archive` and `warren replay --follow` under a service manager's eyes: started with NOTIFY_SOCKET
pointing at a datagram socket the test reads, as systemd starts a `Type=notify` unit. READY comes only
once the sources consume (the broker shows the consumer), STATUS says which sources fail and why,
WATCHDOG pings keep coming, and SIGTERM brings STOPPING and exit code 0, in that order."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.harness.nodes import LocalNode
from tests.integration.archiving import (
    Archivers,
    Witness,
    archived_count,
    publish,
    queue_source,
    simple_messages,
    write_config,
)
from tests.integration.replaying import Replayers
from tests.polling import wait_until

WATCHDOG_USEC = 1_000_000  # a ping every half second


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket bound in the test's directory."""

    def __init__(self, path: Path) -> None:
        assert len(str(path)) < 108, "AF_UNIX paths are limited to 107 bytes"
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.received: list[str] = []

    def receive(self) -> list[str]:
        """Everything that arrived since the last call (also kept, in order, in `received`)."""
        new = []
        while True:
            try:
                new.append(self.sock.recv(65536).decode())
            except TimeoutError:
                self.received += new
                return new

    def wait_for(self, prefix: str, *, timeout: float = 60) -> str:
        """The first message received (so far, or within `timeout`) that starts with `prefix`."""

        def found() -> str | None:
            self.receive()
            return next((m for m in self.received if m.startswith(prefix)), None)

        return wait_until(found, timeout=timeout, what=f"a notify message starting {prefix!r}", every=0)

    def wait_for_pings(self, more: int, *, timeout: float = 10) -> None:
        """`more` WATCHDOG=1 pings beyond those received so far."""
        want = self.received.count("WATCHDOG=1") + more
        wait_until(
            lambda: self.receive() is not None and self.received.count("WATCHDOG=1") >= want,
            timeout=timeout,
            what=f"{more} more watchdog pings (so far: {self.received[-5:]})",
            every=0,
        )


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """The socket, named in the environment the warren subprocesses inherit, with the watchdog on."""
    listener = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.sock.close()


def consumers_on(node: LocalNode, queue: str) -> int:
    out = node.ctl("list_queues", "-q", "--no-table-headers", "name", "consumers")
    for line in out.splitlines():
        name, count = line.rsplit("\t", 1)
        if name == queue:
            return int(count)
    raise AssertionError(f"rabbitmqctl list_queues does not list {queue!r}:\n{out}")


def test_the_archiver_says_ready_once_consuming_then_pings_the_watchdog_then_stopping_on_sigterm(
    broker, notify_socket, tmp_path
):
    token = secrets.token_hex(4)
    queue, missing = f"notify.orders.{token}", f"notify.missing.{token}"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
    sink = tmp_path / "archive"
    config = write_config(
        tmp_path / "warren.toml",
        broker,
        sink,
        [{"src-queue": queue}, {"src-queue": missing, "reconnect-delay": 0.5}],
        definitions_interval=0,
        segment_max_age=0.5,
    )
    with Archivers(tmp_path) as archivers:
        archiver = archivers.start("--config", str(config))
        ready = notify_socket.wait_for("READY=1")
        # READY means consuming: the broker already shows warren's consumer on the queue.
        assert consumers_on(broker, queue) == 1, archiver.stderr()
        assert ready == (
            "READY=1\nSTATUS=archiving 1 of 2 sources, 0 messages since start; "
            f"1 failing: queue {missing!r} in vhost '/' (not found)"
        ), ready
        before_ready = notify_socket.received[: notify_socket.received.index(ready)]
        assert all(m.startswith(("STATUS=starting", "WATCHDOG=1")) for m in before_ready), before_ready

        sent = simple_messages(20, queue)
        publish(broker.amqp_uri, sent)
        wait_until(lambda: archived_count(sink, queue_source(queue)) == len(sent), timeout=60, what="archived")
        notify_socket.wait_for_pings(3)
        status = notify_socket.wait_for("STATUS=archiving 1 of 2 sources, 20 messages since start", timeout=30)
        assert "1 failing" in status

        archiver.terminate()  # asserts exit code 0
        notify_socket.receive()
    after_ready = notify_socket.received[notify_socket.received.index(ready) :]
    stopping = [m for m in after_ready if m.startswith("STOPPING=1")]
    assert stopping == ["STOPPING=1\nSTATUS=stopping: committing the open segments, acknowledging what they hold"]
    assert after_ready.index(stopping[0]) > after_ready.index("WATCHDOG=1")  # READY, WATCHDOG, STOPPING


def test_an_archiver_that_never_got_going_is_never_ready(broker, notify_socket, tmp_path):
    missing = f"notify.missing.{secrets.token_hex(4)}"
    config = write_config(tmp_path / "warren.toml", broker, tmp_path / "archive", [{"src-queue": missing}])
    with Archivers(tmp_path) as archivers:
        archiver = archivers.start("--config", str(config))
        assert archiver.wait() == 3, archiver.stderr()  # every source refused: exit with the broker's refusal
    notify_socket.receive()
    assert not [m for m in notify_socket.received if m.startswith("READY=1")], notify_socket.received
    # STOPPING ends what it says (watchdog pings may follow it while the process winds down).
    said = [m for m in notify_socket.received if m != "WATCHDOG=1"]
    assert said[-1].startswith("STOPPING=1"), notify_socket.received


def test_replay_follow_says_ready_shows_its_progress_pings_and_says_stopping(
    broker, notify_socket, tmp_path, monkeypatch
):
    queue = f"notify.follow.{secrets.token_hex(4)}"
    restored = f"{queue}.restored"
    sink = tmp_path / "archive"
    with Witness(broker.amqp_uri) as witness:
        witness.declare_queue(queue)
        witness.declare_queue(restored)
    config = write_config(tmp_path / "warren.toml", broker, sink, [{"src-queue": queue}], segment_max_age=0.5)
    with Archivers(tmp_path) as archivers:
        monkeypatch.delenv("NOTIFY_SOCKET")  # this archiver is not the one under test
        archiver = archivers.start("--config", str(config))
        archiver.wait_for_log("msg=archiving", timeout=60)
        publish(broker.amqp_uri, simple_messages(20, queue))
        wait_until(lambda: archived_count(sink, queue_source(queue)) == 20, timeout=60, what="archived")
        archiver.terminate()
    with Replayers(tmp_path) as replayers, Witness(broker.amqp_uri) as witness:
        # As warren-replay@.service runs it: archive and target from the environment, not the command line.
        monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
        monkeypatch.setenv("WARREN_REPLAY_ARCHIVE", str(sink))
        monkeypatch.setenv("WARREN_REPLAY_TARGET", broker.amqp_uri)
        follower = replayers.start("--follow", "--map-queue", f"{queue}={restored}")
        ready = notify_socket.wait_for("READY=1")
        assert ready.startswith(f"READY=1\nSTATUS=following file://{sink}: "), ready
        wait_until(lambda: witness.depth(restored) == 20, timeout=60, what="the messages replayed")
        status = notify_socket.wait_for(f"STATUS=following file://{sink}: 20 messages, ", timeout=30)
        assert ", lag " in status, status
        notify_socket.wait_for_pings(2)
        assert follower.terminate() == 0, follower.describe()
    notify_socket.receive()
    assert [m for m in notify_socket.received if m.startswith("STOPPING=1")] == [
        "STOPPING=1\nSTATUS=stopping: finishing what is in flight, saving the replay state"
    ]
