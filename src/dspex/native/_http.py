"""The fast path: keep-alive plain-HTTP/1.1 clients over the stdlib (sync and asyncio).

Used only where they are fully correct: ``http://`` to a loopback host with no
proxy in the way (``transport.py`` decides). Everything else (TLS, proxies,
redirects, remote hosts) goes through a library. Why a hand-written client at
all: a library adds 0.1-2 ms per call on loopback (bench/results/lm.md), more
than the whole per-call budget; a local llama.cpp/vLLM server is the hot case.

* sync: a blocking socket per connection, pooled per endpoint behind a lock,
  shared by all threads; one ``sendall`` per request (headers and body in two
  sends cost a second server wake-up);
* async: asyncio streams, one pool per event loop.

Both read replies with the same sans-I/O :class:`~dspex.native._h1.ResponseReader`
(1xx skipped, bounded head, linear bodies) under ONE deadline per request: connect,
send, head and body together (the sync socket timeout is re-armed to what is left
before every read, so a server trickling bytes cannot stretch a call). A connection
is reused only when its last reply ended exactly at the end of the bytes received
and it is still quiet; anything else is closed. A reused connection that the server
had closed while idle (no byte of an answer arrived) is retried once on a fresh one.
Errors surface as ``Timeout`` / ``ConnectError`` / ``BadResponse``.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import NamedTuple
from urllib.parse import urlsplit

from ._h1 import BadResponse, Response, ResponseReader, request_bytes

__all__ = ["AsyncPool", "BadResponse", "ConnectError", "Endpoint", "Response", "SyncPool", "Timeout"]

_RECV = 65536


class Timeout(Exception):
    """No complete reply within the timeout."""


class ConnectError(Exception):
    """Could not connect, or the connection broke mid-request."""


class Endpoint(NamedTuple):
    scheme: str
    host: str
    port: int
    base_path: str  # "/v1" for "http://h:p/v1" (no trailing slash)

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api_base must be an http(s) URL, not {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"api_base has a bad port: {url!r}") from None
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def host_header(self) -> str:
        return self.origin.split("://", 1)[1]


class _Retry(Exception):
    """A reused connection was closed by the server before any byte of an answer: send again, fresh."""


async def _until_loop_end(aclose: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await aclose()


async def at_loop_end(aclose: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    """Run ``aclose()`` when the running loop shuts down its async generators (``asyncio.run`` does).

    Keep the returned generator referenced: the loop only holds it weakly.
    """
    gen = _until_loop_end(aclose)
    await gen.__anext__()
    return gen


def _failed(conn: _SConn | _AConn | None, exc: BaseException, timeout: float) -> BaseException:
    """Close the connection of a failed exchange (it is in doubt); the error to raise for ``exc``."""
    if conn is not None:
        conn.close()
    if isinstance(exc, TimeoutError):
        return Timeout(f"no complete reply within {timeout:g}s")
    if isinstance(exc, OSError):
        return ConnectError(f"{type(exc).__name__}: {exc}")
    return exc  # BadResponse, cancellation, ...: as they are


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class _SConn:
    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = memoryview(bytearray(_RECV))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def quiet(self) -> bool:
        """Nothing to read on an idle connection (no EOF, no stray bytes): safe to send on."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def exchange(self, payload: bytes, deadline: float, reused: bool) -> tuple[Response, bool]:
        sock = self.sock
        sock.settimeout(_left(deadline))
        sock.sendall(payload)
        reader = ResponseReader()
        try:
            while True:
                sock.settimeout(_left(deadline))
                n = sock.recv_into(self.buf)
                resp = reader.feed(self.buf[:n]) if n else reader.eof()
                if resp is not None:
                    return resp, reader.keep and not reader.extra
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            if reused and not reader.started:
                raise _Retry() from exc
            raise


class SyncPool:
    """Idle keep-alive connections to one endpoint, shared thread-safely."""

    def __init__(self, endpoint: Endpoint, max_idle: int = 64):
        self.endpoint = endpoint
        self.max_idle = max_idle
        self._idle: list[_SConn] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _checkout(self) -> _SConn | None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share the parent's sockets
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if conn.quiet():
                    return conn
                conn.close()
        return None

    def _new(self, deadline: float) -> _SConn:
        ep = self.endpoint
        sock = socket.create_connection((ep.host, ep.port), timeout=_left(deadline))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _SConn(sock)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        deadline = time.monotonic() + timeout
        payload = request_bytes(method, path, self.endpoint.host_header, headers, body)
        conn = self._checkout()
        reused = conn is not None
        while True:
            try:
                if conn is None:
                    conn = self._new(deadline)
                resp, keep = conn.exchange(payload, deadline, reused)
                break
            except _Retry:
                conn.close()  # type: ignore[union-attr]
                conn, reused = None, False
            except BaseException as exc:
                err = _failed(conn, exc, timeout)
                if err is exc:
                    raise
                raise err from exc
        if keep:
            with self._lock:
                if len(self._idle) < self.max_idle and self._pid == os.getpid():
                    self._idle.append(conn)
                    return resp
        conn.close()
        return resp

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __del__(self) -> None:  # an LM dropped without close(): release its sockets quietly
        for conn in getattr(self, "_idle", ()):
            conn.close()


class _AConn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass

    def quiet(self) -> bool:
        # StreamReader has no public "bytes buffered" query; a stray byte means the connection is in doubt
        return not self.reader.at_eof() and not getattr(self.reader, "_buffer", b"") and not self.writer.is_closing()

    async def exchange(self, payload: bytes, reused: bool) -> tuple[Response, bool]:
        self.writer.write(payload)
        reader = ResponseReader()
        try:
            while True:
                data = await self.reader.read(_RECV)
                resp = reader.feed(data) if data else reader.eof()
                if resp is not None:
                    return resp, reader.keep and not reader.extra
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            if reused and not reader.started:
                raise _Retry() from exc
            raise


class AsyncPool:
    """Idle keep-alive connections to one endpoint, per event loop."""

    def __init__(self, endpoint: Endpoint, max_idle: int = 256):
        self.endpoint = endpoint
        self.max_idle = max_idle
        # connections are bound to the loop that opened them
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_AConn]] = weakref.WeakKeyDictionary()
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    async def _open(self) -> _AConn:
        ep = self.endpoint
        reader, writer = await asyncio.open_connection(ep.host, ep.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _AConn(reader, writer)

    async def _idle_list(self) -> list[_AConn]:
        loop = asyncio.get_running_loop()
        idle = self._by_loop.get(loop)
        if idle is None:
            with self._lock:
                idle = self._by_loop.setdefault(loop, [])
            conns = idle

            async def close_idle() -> None:
                while conns:
                    conns.pop().close()

            # closed with the loop (asyncio.run), not left to warn "unclosed transport" at exit
            self._closers[loop] = await at_loop_end(close_idle)
        return idle

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        idle = self._by_loop.get(asyncio.get_running_loop()) or await self._idle_list()
        payload = request_bytes(method, path, self.endpoint.host_header, headers, body)
        conn: _AConn | None = None
        try:
            async with asyncio.timeout(timeout):
                while idle:
                    conn = idle.pop()
                    if conn.quiet():
                        break
                    conn.close()
                    conn = None
                reused = conn is not None
                while True:
                    if conn is None:
                        conn = await self._open()
                    try:
                        resp, keep = await conn.exchange(payload, reused)
                        break
                    except _Retry:
                        conn.close()
                        conn, reused = None, False
        except BaseException as exc:  # incl. cancellation mid-exchange: the connection is in doubt
            err = _failed(conn, exc, timeout)
            if err is exc:
                raise
            raise err from exc
        if keep and len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()
        return resp

    def close(self) -> None:
        for conns in list(self._by_loop.values()):
            for conn in conns:
                conn.close()
            conns.clear()
