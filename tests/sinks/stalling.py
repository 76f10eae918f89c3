"""Endpoints that stall, for the deadline tests: a loopback TCP listener that accepts and never answers (the
proxy that stops forwarding on demand is bridge/harness/proxy.py).

`StallingServer(mode)` listens on a free 127.0.0.1 port and serves every connection from one thread:

- "mute": reads and discards what it is sent, never answers (a server stuck after taking a request);
- "deaf": never reads, so the client's upload stops moving once the socket buffers are full;
- "trickle": reads, then answers one byte of an HTTP status line every `trickle_every` seconds, never
  finishing it (each byte resets a client's read timeout: only a total deadline ends the request).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

from bridge.harness.proxy import ServingThread

TRICKLE = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 100_000


class StallingServer(ServingThread):
    def __init__(self, mode: str, *, trickle_every: float = 0.2) -> None:
        if mode not in ("mute", "deaf", "trickle"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.trickle_every = trickle_every
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self.received = 0  # bytes read from clients (not in "deaf" mode)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"stalling-{mode}-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        connections: dict[socket.socket, int] = {}  # connection -> bytes of TRICKLE sent
        next_trickle = time.monotonic()
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=0.05):
                    if key.fileobj is self._listener:
                        with_client, _ = self._listener.accept()
                        with_client.setblocking(False)
                        self.accepted += 1
                        connections[with_client] = 0
                        if self.mode != "deaf":
                            selector.register(with_client, selectors.EVENT_READ)
                        continue
                    client = key.fileobj
                    assert isinstance(client, socket.socket)
                    try:
                        data = client.recv(1 << 16)
                    except OSError:
                        data = b""
                    if not data:  # the client gave up: forget it
                        selector.unregister(client)
                        connections.pop(client, None)
                        client.close()
                    self.received += len(data)
                if self.mode == "trickle" and time.monotonic() >= next_trickle:
                    next_trickle = time.monotonic() + self.trickle_every
                    for client, sent in list(connections.items()):
                        try:
                            client.send(TRICKLE[sent : sent + 1])
                            connections[client] = sent + 1
                        except OSError:
                            pass
        finally:
            for client in connections:
                client.close()
            selector.close()
            self._listener.close()
