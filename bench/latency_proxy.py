"""A loopback TCP proxy that adds latency: every chunk a client sends is held `delay` seconds, then
forwarded to the upstream server, in order; what the server sends back is forwarded at once.

In front of an HTTP server this adds `delay` to every request (its last byte reaches the server
`delay` later, while its chunks still stream back to back, so bandwidth is not limited): an object
store `delay` away. It runs its own event loop in a daemon thread of the process that starts it, so
benchmarks that time worker processes can keep it in the orchestrator, out of the worker's way.

    with LatencyProxy(("127.0.0.1", 9000), delay=0.02) as proxy:
        ...  # clients connect to proxy.endpoint (http://127.0.0.1:<port>)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from types import TracebackType

HELD_BYTES_MAX = 8 * 1024 * 1024  # bytes held for one connection before its client is no longer read


class _Connection:
    """One client connection and the upstream connection made for it."""

    def __init__(self, proxy: LatencyProxy, loop: asyncio.AbstractEventLoop) -> None:
        self.proxy = proxy
        self.loop = loop
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.held: deque[tuple[float, bytes]] = deque()  # (when to forward, chunk), in arrival order
        self.held_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.client_eof = False
        self.closed = False
        self.client_paused: set[str] = set()  # why the client is not read: "held", "server-full"

    # -- the client side

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        self.proxy.connections += 1
        self.proxy._live.add(self)
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _ServerSide(self), *self.proxy.upstream)
        except OSError:
            self.close()

    def from_client(self, data: bytes) -> None:
        self.held.append((self.loop.time() + self.proxy.delay, data))
        self.held_bytes += len(data)
        if self.held_bytes > HELD_BYTES_MAX:
            self._pause_client("held")
        self._schedule()

    def client_eof_received(self) -> None:
        self.client_eof = True
        self._forward_due()

    # -- forwarding what was held

    def _schedule(self) -> None:
        if self.timer is None and self.held and self.server is not None:
            self.timer = self.loop.call_at(self.held[0][0], self._forward_due)

    def _forward_due(self) -> None:
        self.timer = None
        if self.server is None or self.closed:
            return
        now = self.loop.time()
        due: list[bytes] = []
        while self.held and self.held[0][0] <= now:
            chunk = self.held.popleft()[1]
            self.held_bytes -= len(chunk)
            due.append(chunk)
        if due:
            self.server.write(b"".join(due))
            self.proxy.forwarded += len(due)
        if self.held_bytes <= HELD_BYTES_MAX // 2:
            self._resume_client("held")
        if self.client_eof and not self.held:
            self.server.write_eof()
        self._schedule()

    def _pause_client(self, why: str) -> None:
        if not self.client_paused and self.client is not None:
            self.client.pause_reading()
        self.client_paused.add(why)

    def _resume_client(self, why: str) -> None:
        if why in self.client_paused:
            self.client_paused.discard(why)
            if not self.client_paused and self.client is not None and not self.closed:
                self.client.resume_reading()

    # -- the server side

    def server_made(self, transport: asyncio.Transport) -> None:
        if self.closed:
            transport.close()
            return
        self.server = transport
        self._forward_due()

    def from_server(self, data: bytes) -> None:
        if self.client is not None and not self.closed:
            self.client.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy._live.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        for transport in (self.client, self.server):
            if transport is not None:
                transport.close()  # what is buffered is still written


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: LatencyProxy, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = _Connection(proxy, loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.client_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.conn.from_client(data)

    def eof_received(self) -> bool:
        self.conn.client_eof_received()
        return True  # keep the other half open until the server has answered

    def pause_writing(self) -> None:  # the client reads slower than the server answers
        if self.conn.server is not None:
            self.conn.server.pause_reading()

    def resume_writing(self) -> None:
        if self.conn.server is not None and not self.conn.closed:
            self.conn.server.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.close()


class _ServerSide(asyncio.Protocol):
    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.server_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.conn.from_server(data)

    def eof_received(self) -> bool:
        return False  # close: the client sees the end too

    def pause_writing(self) -> None:
        self.conn._pause_client("server-full")

    def resume_writing(self) -> None:
        self.conn._resume_client("server-full")

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.close()


class LatencyProxy:
    """Listens on a free 127.0.0.1 port; `close()` (or leaving the `with`) stops it and its connections."""

    def __init__(self, upstream: tuple[str, int], *, delay: float = 0.02) -> None:
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self.connections = 0  # client connections accepted
        self.forwarded = 0  # writes to the upstream server, each after holding what was due
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._live: set[_Connection] = set()
        self._thread = threading.Thread(target=self._run, name=f"latency-proxy-{upstream[1]}", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._failure is not None or not self.port:
            raise RuntimeError(f"the latency proxy did not start: {self._failure!r}")
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        try:
            from protocol.loop import run  # uvloop when installed: less of the host's CPU per byte
        except ImportError:
            run = asyncio.run
        try:
            run(self._serve())
        except BaseException as err:  # reported to start(), which waits for the port
            self._failure = err
            self._ready.set()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stop = loop, asyncio.Event()
        server = await loop.create_server(lambda: _ClientSide(self, loop), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for conn in list(self._live):
                conn.close()
            await server.wait_closed()
