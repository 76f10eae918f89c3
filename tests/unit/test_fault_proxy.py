"""The harness's fault proxy (bridge/harness/proxy.py), against a loopback echo server: it forwards in
order, holds chunks back by `delay` both ways, and cuts every connection on demand."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bridge.harness.proxy import FaultProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()
    stopping.set()
    thread.join(5)
    server.close()


def round_trip(port: int, chunks: list[bytes]) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        started = time.monotonic()
        for chunk in chunks:
            client.sendall(chunk)
        want, got = sum(len(c) for c in chunks), b""
        while len(got) < want:
            got += client.recv(1 << 16)
        return got, time.monotonic() - started


def test_a_delay_holds_every_chunk_both_ways_and_keeps_their_order(echo):
    with FaultProxy(echo) as proxy:
        got, fast = round_trip(proxy.port, [b"a" * 10, b"b" * 10])
        assert got == b"a" * 10 + b"b" * 10
        proxy.delay = 0.2
        chunks = [b"%03d" % i for i in range(50)]
        got, slow = round_trip(proxy.port, chunks)
        assert got == b"".join(chunks)
        assert slow >= 0.4 > fast  # 0.2 s on the way out, 0.2 s on the way back


def test_a_cut_closes_the_connection(echo):
    with FaultProxy(echo) as proxy, socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        proxy.cut()
        assert client.recv(1) == b""  # closed by the proxy
