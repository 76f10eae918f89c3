"""A loopback TCP proxy the tests put between warren and a broker or a store, to make the network
faults production has: stop forwarding (a stalled peer, past heartbeats and deadlines), cut every
connection (a FIN, or a reset), and forward again. Test and demo infrastructure, like nodes.py."""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections import deque
from types import TracebackType
from typing import Self


class ServingThread:
    """A loopback server run by one daemon thread (`_serve`, until `_stopping`), closed on leaving a
    `with` block."""

    _stopping: threading.Event
    _thread: threading.Thread

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)


class FaultProxy(ServingThread):
    """A loopback TCP proxy in front of `upstream` (host, port) that can be told to stop forwarding.

    `pause()`: nothing more is read from either side (bytes wait in the socket buffers, new connections
    are accepted and left waiting), as a store that stalls looks to its client; `resume()` forwards again,
    what waited included. `cut()` closes every connection through it at once, both sides (with
    `reset=True` as an RST, as a middlebox dropping state does); new connections are taken as before.
    `delay` (seconds, 0 by default) holds every chunk that long before forwarding it, both ways, in order:
    a slow or distant link.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.forwarded = 0  # bytes, both ways
        self.delay = 0.0
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._stopping = threading.Event()
        self._cut: str | None = None
        self._cut_done = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._forwarding.clear()

    def cut(self, *, reset: bool = False) -> None:
        """Close every connection now open through the proxy (done by its thread, within 50 ms)."""
        self._cut_done.clear()
        self._cut = "reset" if reset else "close"
        self._cut_done.wait(5)

    def resume(self) -> None:
        self._forwarding.set()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        peers: dict[socket.socket, socket.socket] = {}  # each side -> the other
        watched = False  # whether the listener and the connections are registered (not while paused)

        def watch(on: bool) -> None:
            nonlocal watched
            if on == watched:
                return
            for s in (self._listener, *peers):
                if on:
                    selector.register(s, selectors.EVENT_READ)
                else:
                    selector.unregister(s)
            watched = on

        def drop(side: socket.socket) -> None:
            other = peers.pop(side, None)
            for s in (side, other):
                if s is None:
                    continue
                peers.pop(s, None)
                if watched:
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(s)
                s.close()

        def cut_all(how: str) -> None:
            for s in list(peers):
                if how == "reset":
                    with contextlib.suppress(OSError):
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                drop(s)

        held: deque[tuple[float, socket.socket, bytes]] = deque()  # (when due, to whom, what), in order

        def forward(to: socket.socket, data: bytes) -> None:
            try:
                to.settimeout(10)
                to.sendall(data)
                to.setblocking(False)
                self.forwarded += len(data)
            except OSError:
                drop(to)

        def forward_due() -> None:
            now = time.monotonic()
            while held and held[0][0] <= now:
                _, to, data = held.popleft()
                if to in peers:  # not cut meanwhile
                    forward(to, data)

        try:
            while not self._stopping.is_set():
                forward_due()
                if self._cut is not None:
                    cut_all(self._cut)
                    self._cut = None
                    self._cut_done.set()
                # Paused, nothing is registered: new connections wait in the backlog (made, never
                # answered), and bytes wait in the socket buffers.
                watch(self._forwarding.is_set())
                if not watched:
                    self._stopping.wait(0.05)
                    continue
                wait = min(0.05, max(0.0, held[0][0] - time.monotonic())) if held else 0.05
                for key, _ in selector.select(timeout=wait):
                    if key.fileobj is self._listener:
                        client, _ = self._listener.accept()
                        try:
                            server = socket.create_connection(self.upstream, timeout=5)
                        except OSError:
                            client.close()
                            continue
                        for s in (client, server):
                            s.setblocking(False)
                        peers[client], peers[server] = server, client
                        selector.register(client, selectors.EVENT_READ)
                        selector.register(server, selectors.EVENT_READ)
                        continue
                    side = key.fileobj
                    assert isinstance(side, socket.socket)
                    if side not in peers:
                        continue
                    try:
                        data = side.recv(1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        drop(side)
                        continue
                    if self.delay > 0 or held:  # behind what is held, never past it
                        held.append((time.monotonic() + self.delay, peers[side], data))
                    else:
                        forward(peers[side], data)
        finally:
            for s in list(peers):
                s.close()
            selector.close()
            self._listener.close()
