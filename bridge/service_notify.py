"""systemd's notify protocol (sd_notify), for `Type=notify` units: READY, STATUS, WATCHDOG and STOPPING
as datagrams on the AF_UNIX socket NOTIFY_SOCKET names (a path, or an abstract socket written '@name').

A few lines over a socket rather than a dependency. Without NOTIFY_SOCKET nothing is sent, so a run
outside systemd behaves exactly as before. Sending never fails the service: a datagram systemd cannot
take is logged once and dropped, since the archive, not systemd's view of it, is what matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

log = logging.getLogger("warren.service")

STATUS_EVERY = 5.0  # seconds between STATUS refreshes of what changes without telling (counts, lag)
STATUS_MAX_CHARS = 1000  # systemctl status shows one line; keep it one that fits a datagram easily


class Notifier:
    """Sends notify messages to one socket; a no-op when `address` is None."""

    def __init__(self, address: str | None, *, watchdog_interval: float | None = None) -> None:
        self.address = _socket_address(address) if address else None
        # How often to send WATCHDOG=1: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = watchdog_interval if self.address else None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID as systemd sets them for the service's main process."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """One datagram of `KEY=value` lines, e.g. notify("READY=1", "STATUS=archiving"); False if it was
        not sent (no socket, or its queue full)."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on systemd: a full queue drops the datagram (logged below).
                self._socket.setblocking(False)
            self._socket.sendto(message, self.address)
            return True
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot notify systemd (NOTIFY_SOCKET); going on without it",
                    extra={"socket": _printable(self.address), "error": err.strerror or str(err)},
                )
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", status_assignment(status))

    def status(self, status: str) -> bool:
        return self.notify(status_assignment(status))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.notify("STOPPING=1", status_assignment(status))

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, when the watchdog is on and meant for this process (WATCHDOG_PID absent or ours)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1e6


def status_assignment(status: str) -> str:
    """STATUS= takes one line: newlines would start new assignments."""
    line = " ".join(status.split())
    if len(line) > STATUS_MAX_CHARS:
        line = line[: STATUS_MAX_CHARS - 3] + "..."
    return f"STATUS={line}"


def _socket_address(address: str) -> str | bytes:
    if address.startswith("@"):  # abstract namespace: a leading NUL byte instead of the '@'
        return b"\0" + address[1:].encode()
    return address


def _printable(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


class ServiceState(Protocol):
    """What a service tells systemd: whether start-up is over, and what it is doing, in one line."""

    @property
    def changed(self) -> asyncio.Event:
        """Set when `ready()` or `line()` may say something new."""
        ...

    def ready(self) -> bool: ...

    def line(self) -> str: ...


async def keep_informed(notifier: Notifier, stopping: asyncio.Event, state: ServiceState, stopping_status: str) -> None:
    """Tell systemd what the service is doing, from the event loop itself, until cancelled: READY=1 once
    `state.ready()` holds, STATUS whenever `state.line()` says something new (looked at when
    `state.changed` is set, and every STATUS_EVERY seconds), STOPPING=1 (with `stopping_status`) as soon
    as `stopping` is set or this is cancelled, and WATCHDOG=1 every watchdog interval meanwhile."""
    if not notifier.enabled:
        return
    report = _Report(notifier, state, stopping_status)
    try:
        await report.run(stopping)
    finally:
        report.stop()  # cancelled first: the service ended without `stopping` (every source done)
        notifier.close()


class _Report:
    """The loop behind `keep_informed`: wakes for a change, a stop, a STATUS refresh or a watchdog ping."""

    def __init__(self, notifier: Notifier, state: ServiceState, stopping_status: str) -> None:
        self.notifier = notifier
        self.state = state
        self.stopping_status = stopping_status
        self.is_ready = False
        self.stopped = False
        self.shown = ""

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self.notifier.watchdog_interval
        next_ping = next_status = loop.time()
        while True:
            changed = self.state.changed.is_set()
            self.state.changed.clear()
            now = loop.time()
            if stopping.is_set():
                self.stop()
            elif not self.is_ready and self.state.ready():
                # A datagram the manager's full queue dropped is sent again at the next refresh.
                line = self.state.line()
                if self.notifier.ready(line):
                    self.is_ready, self.shown = True, line
                next_status = now + STATUS_EVERY
            elif changed or now >= next_status:
                self._show_status()
                next_status = now + STATUS_EVERY
            if interval is not None and now >= next_ping:
                self.notifier.watchdog()
                next_ping = now + interval
            if self.stopped and interval is None:
                return
            # After STOPPING only the watchdog is left to do, until the service ends and cancels this.
            deadline = next_ping if self.stopped else next_status
            if interval is not None:
                deadline = min(deadline, next_ping)
            wakers = {asyncio.ensure_future(self.state.changed.wait())}
            if not self.stopped:
                wakers.add(asyncio.ensure_future(stopping.wait()))
            try:
                await asyncio.wait(
                    wakers, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waker in wakers:
                    waker.cancel()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.notifier.stopping(self.stopping_status)

    def _show_status(self) -> None:
        text = self.state.line()
        if text != self.shown and self.notifier.status(text):
            self.shown = text


@contextlib.asynccontextmanager
async def notifying(
    stopping: asyncio.Event, state: ServiceState, stopping_status: str, notifier: Notifier | None = None
) -> AsyncIterator[None]:
    """`keep_informed` while the body runs (the notifier from the environment unless given)."""
    task = asyncio.create_task(
        keep_informed(notifier or Notifier.from_environment(), stopping, state, stopping_status), name="systemd notify"
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
