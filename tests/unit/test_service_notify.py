"""The sd_notify protocol against real AF_UNIX datagram sockets, as systemd listens: a path bound in
tmp_path and an abstract socket ('@name'); what the archiver's status line says about its sources."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bridge import service_notify
from bridge.archiver.status import SourceStates, short_reason
from bridge.service_notify import Notifier, keep_informed, watchdog_interval
from protocol.errors import AuthenticationError, ChannelClosedByBroker, ConnectionLost
from protocol.loop import run
from tests.polling import eventually


class Listener:
    """The service manager's end: a bound datagram socket; messages are read in order, with a deadline."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.buffered: list[str] = []

    def messages(self) -> list[str]:
        """Everything received and not yet read."""
        while True:
            try:
                self.buffered.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                out, self.buffered = self.buffered, []
                return out

    async def next(self, *, skip_pings: bool = False, timeout: float = 5.0) -> str:
        """The next message (with `skip_pings`, the next one that is not WATCHDOG=1)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.buffered = self.messages()
            while self.buffered:
                message = self.buffered.pop(0)
                if not (skip_pings and message == "WATCHDOG=1"):
                    return message
            await asyncio.sleep(0.005)
        raise AssertionError(f"no notify message within {timeout}s")


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    path = str(tmp_path / "notify")
    assert len(path) < 108, "AF_UNIX paths are limited to 107 bytes"
    listener = Listener(path)
    yield path, listener
    listener.sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, Listener]]:
    name = f"warren-test-{secrets.token_hex(6)}"
    listener = Listener(b"\0" + name.encode())
    yield "@" + name, listener
    listener.sock.close()


def test_ready_status_watchdog_and_stopping_reach_a_socket_bound_to_a_path(path_listener):
    address, listener = path_listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    notifier.ready("archiving 1 of 1 sources")
    notifier.status("archiving 1 of 1 sources,\n 10 messages")
    notifier.watchdog()
    notifier.stopping("stopping")
    notifier.close()
    assert listener.messages() == [
        "READY=1\nSTATUS=archiving 1 of 1 sources",
        "STATUS=archiving 1 of 1 sources, 10 messages",  # one line: a newline would start another assignment
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_an_abstract_socket_is_named_with_a_leading_at_sign(abstract_listener):
    address, listener = abstract_listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    notifier.ready("up")
    assert run(listener.next()) == "READY=1\nSTATUS=up"


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("up")
    notifier.watchdog()
    notifier.stopping("down")


def test_a_socket_nobody_listens_on_is_reported_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="warren.service"):
        notifier.ready("up")
        notifier.watchdog()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_is_pinged_at_half_its_timeout_and_only_for_our_pid(env, interval):
    assert watchdog_interval(env) == interval


@dataclass
class FakeState:
    is_ready: bool = False
    text: str = "starting"
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def ready(self) -> bool:
        return self.is_ready

    def line(self) -> str:
        return self.text


def test_ready_comes_once_the_service_says_so_then_watchdog_pings_then_stopping(path_listener):
    address, listener = path_listener

    async def scenario() -> None:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
        state = FakeState()
        stopping = asyncio.Event()
        informing = asyncio.create_task(keep_informed(notifier, stopping, state, "stopping: committing"))
        assert await listener.next() == "STATUS=starting"
        assert await listener.next() == "WATCHDOG=1"
        assert await listener.next() == "WATCHDOG=1"  # not ready yet: no READY, only the pings
        state.is_ready, state.text = True, "archiving 2 of 2 sources"
        state.changed.set()
        assert await listener.next(skip_pings=True) == "READY=1\nSTATUS=archiving 2 of 2 sources"
        state.text = "archiving 1 of 2 sources; 1 failing: queue 'x' in vhost '/' (not found)"
        state.changed.set()
        assert await listener.next(skip_pings=True) == f"STATUS={state.text}"
        stopping.set()
        assert await listener.next(skip_pings=True) == "STOPPING=1\nSTATUS=stopping: committing"
        assert await listener.next() == "WATCHDOG=1"  # the shutdown is watched over too
        informing.cancel()
        await asyncio.gather(informing, return_exceptions=True)
        assert listener.messages() in ([], ["WATCHDOG=1"])  # STOPPING is sent once

    run(scenario())


def test_a_service_that_ends_without_being_stopped_still_says_stopping(abstract_listener):
    address, listener = abstract_listener

    async def scenario() -> None:
        state = FakeState(is_ready=True, text="archiving")
        informing = asyncio.create_task(
            keep_informed(Notifier.from_environment({"NOTIFY_SOCKET": address}), asyncio.Event(), state, "done")
        )
        assert await listener.next() == "READY=1\nSTATUS=archiving"
        informing.cancel()
        await asyncio.gather(informing, return_exceptions=True)
        assert listener.messages() == ["STOPPING=1\nSTATUS=done"]

    run(scenario())


def fill(address: str) -> list[bytes]:
    """Fill the listener's queue (net.unix.max_dgram_qlen datagrams) as a busy service manager would
    leave it: the notifier's next datagram finds no room and is dropped."""
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    sent = []
    try:
        while True:
            sender.sendto(b"X=%d" % len(sent), address)
            sent.append(b"X=%d" % len(sent))
    except BlockingIOError:
        return sent
    finally:
        sender.close()


class DropCountingNotifier(Notifier):
    """The real notifier, counting the datagrams it could not send, so a test sees a drop happen."""

    dropped = 0

    def notify(self, *assignments: str) -> bool:
        sent = super().notify(*assignments)
        self.dropped += not sent
        return sent


def test_ready_and_status_dropped_by_a_full_queue_are_sent_again_once_it_has_room(path_listener, monkeypatch):
    address, listener = path_listener
    monkeypatch.setattr(service_notify, "STATUS_EVERY", 0.1)

    async def scenario() -> None:
        state = FakeState(is_ready=True, text="archiving 1 of 2 sources, 0 messages since start")
        notifier = DropCountingNotifier(address)
        assert fill(address), "the listener's queue took no datagram"
        informing = asyncio.create_task(keep_informed(notifier, asyncio.Event(), state, "done"))
        await eventually(lambda: notifier.dropped >= 1, "READY tried while the queue was full")
        assert all(m.startswith("X=") for m in listener.messages())
        assert await listener.next() == f"READY=1\nSTATUS={state.text}"

        fill(address)
        dropped = notifier.dropped
        state.text = "archiving 1 of 2 sources, 20 messages since start"
        state.changed.set()
        await eventually(lambda: notifier.dropped > dropped, "the STATUS tried while the queue was full")
        assert all(m.startswith("X=") for m in listener.messages())
        assert await listener.next() == f"STATUS={state.text}"
        informing.cancel()
        await asyncio.gather(informing, return_exceptions=True)

    run(scenario())


@dataclass
class FakeSource:
    name: str
    archived: int = 0


def test_the_status_line_names_failing_sources_and_ready_waits_for_every_first_attempt():
    orders, events, audit = (
        FakeSource("queue 'orders' in vhost '/'", 10),
        FakeSource("stream 'events' in vhost '/'", 5),
        FakeSource("queue 'x' in vhost '/'"),
    )
    states = SourceStates([orders, events, audit])
    assert not states.ready()
    assert states.line() == "starting: 0 of 3 sources consuming"
    states.consuming(orders.name)
    states.consuming(events.name)
    assert not states.ready()
    states.failing(audit.name, ChannelClosedByBroker(404, "NOT_FOUND - no queue 'x' in vhost '/'"))
    assert states.ready()
    assert states.line() == (
        "archiving 2 of 3 sources, 15 messages since start; 1 failing: queue 'x' in vhost '/' (not found)"
    )
    states.consuming(audit.name)
    assert states.line() == "archiving 3 of 3 sources, 15 messages since start"
    states.stopped(events.name, None)
    assert states.line() == "archiving 2 of 3 sources, 15 messages since start; 1 finished"
    states.stopped(orders.name, OSError("no space left on /var/lib/warren/orders"))
    assert states.line() == (
        "archiving 1 of 3 sources, 15 messages since start; "
        "1 stopped for good: queue 'orders' in vhost '/' (no space left on /var/lib/warren/orders); 1 finished"
    )


def test_short_reasons_say_what_the_broker_said_and_never_a_password():
    assert short_reason(AuthenticationError(403, "ACCESS_REFUSED - Login was refused")) == "credentials refused"
    assert short_reason(ConnectionLost("cannot connect to amqp://u:***@h:5672/")) == "connection lost"
    assert "secret" not in short_reason(OSError("amqp://warren:secret@host:5672/ went away"))
