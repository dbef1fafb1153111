"""Minimal keep-alive HTTP/1.1 clients for the LM hot path (sync and asyncio).

Why not httpx: measured on this machine (bench/results/lm.md), an httpx
``Client.post`` adds ~150-250 µs per call over the bytes on the wire and the
async client more, which alone exceeds the ``Predict over HTTP`` budget
(+0.1 ms). LM calls need very little of HTTP: one POST of a JSON body to a
known host, a JSON reply with Content-Length (or chunked), keep-alive. So:

* sync: a blocking socket per connection (TLS through ``ssl``), pooled per
  endpoint behind a lock, shared by all threads. Not ``http.client``: it
  writes headers and body in two sends, which costs a second wake-up of the
  server per call (~0.3 ms measured on loopback here);
* async: asyncio streams, one pool per event loop (connections belong to the
  loop that opened them), with the same parser for the response head.

A reused connection that the server closed while idle is retried once on a
fresh connection (the request never reached the server). Errors surface as
``Timeout`` / ``ConnectError``; lm.py turns them into the dspex error family.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import weakref
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = ["AsyncPool", "ConnectError", "Endpoint", "Response", "SyncPool", "Timeout"]


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


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
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_ssl_context: ssl.SSLContext | None = None


def _ssl() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class _Stale(Exception):
    """The server closed a kept-alive connection before answering (nothing was processed)."""


def _request_head(method: str, path: str, endpoint: Endpoint, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    # one buffer, one send: headers and body in separate segments cost a wake-up each
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _parse_head(raw: bytes) -> tuple[int, dict[str, str], bool]:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
    return int(parts[1]), headers, keep


class _SConn:
    """A blocking socket with a read buffer: just enough HTTP/1.1 for JSON replies."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        self.buf += chunk

    def read_until(self, sep: bytes) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out, self.buf = self.buf[: i + len(sep)], self.buf[i + len(sep) :]
                return out
            self._fill()

    def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self) -> tuple[Response, bool]:
        status, headers, keep = _parse_head(self.read_until(b"\r\n\r\n"))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.read_until(b"\r\n").split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.read_until(b"\r\n") != b"\r\n":
                        pass
                    break
                chunks.append(self.read_exactly(size))
                self.read_exactly(2)
            body = b"".join(chunks)
        elif "content-length" in headers:
            body = self.read_exactly(int(headers["content-length"]))
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            parts = [self.buf]
            self.buf = b""
            while chunk := self.sock.recv(65536):
                parts.append(chunk)
            body, keep = b"".join(parts), False
        return Response(status, headers, body), keep


class SyncPool:
    """Idle keep-alive connections to one endpoint, shared thread-safely."""

    def __init__(self, endpoint: Endpoint, max_idle: int = 64):
        self.endpoint = endpoint
        self.max_idle = max_idle
        self._idle: list[_SConn] = []
        self._lock = threading.Lock()

    def _new(self, timeout: float) -> _SConn:
        ep = self.endpoint
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ep.scheme == "https":
            sock = _ssl().wrap_socket(sock, server_hostname=ep.host)
        return _SConn(sock)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        payload = _request_head(method, path, self.endpoint, headers, body)
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        while True:
            try:
                if conn is None:
                    conn = self._new(timeout)
                else:
                    conn.sock.settimeout(timeout)
                conn.sock.sendall(payload)
                try:
                    resp, keep = conn.read_response()
                except _STALE as exc:
                    if reused and not conn.buf:
                        raise _Stale() from exc
                    raise
            except _Stale:
                conn.close()  # type: ignore[union-attr]
                conn, reused = None, False  # the server dropped an idle connection: once more, fresh
                continue
            except TimeoutError as exc:
                if conn is not None:
                    conn.close()
                raise Timeout(str(exc) or "timed out") from exc
            except (OSError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                if reused and isinstance(exc, _STALE):
                    conn, reused = None, False
                    continue
                raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
            if keep:
                with self._lock:
                    if len(self._idle) < self.max_idle:
                        self._idle.append(conn)
                        return resp
            conn.close()
            return resp

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
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


class AsyncPool:
    """Idle keep-alive connections to one endpoint, per event loop."""

    def __init__(self, endpoint: Endpoint, max_idle: int = 256):
        self.endpoint = endpoint
        self.max_idle = max_idle
        # connections are bound to the loop that opened them
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_AConn]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    async def _open(self) -> _AConn:
        ep = self.endpoint
        if ep.scheme == "https":
            reader, writer = await asyncio.open_connection(ep.host, ep.port, ssl=_ssl(), server_hostname=ep.host)
        else:
            reader, writer = await asyncio.open_connection(ep.host, ep.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _AConn(reader, writer)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        loop = asyncio.get_running_loop()
        idle = self._by_loop.get(loop)
        if idle is None:
            with self._lock:
                idle = self._by_loop.setdefault(loop, [])
        payload = _request_head(method, path, self.endpoint, headers, body)
        try:
            async with asyncio.timeout(timeout):
                conn = idle.pop() if idle else None
                reused = conn is not None
                while True:
                    if conn is None:
                        conn = await self._open()
                    try:
                        conn.writer.write(payload)
                        resp, keep = await _read_response(conn.reader)
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        conn.close()
                        conn = None
                        if reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                            reused = False  # an idle connection the server had closed: retry once
                            continue
                        raise
                    break
        except TimeoutError as exc:
            if conn is not None:
                conn.close()
            raise Timeout(f"no complete reply within {timeout}s") from exc
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
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


async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
    status, headers, keep = _parse_head(await reader.readuntil(b"\r\n\r\n"))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:
        body = await reader.read()  # until the server closes
        keep = False
    return Response(status, headers, body), keep
