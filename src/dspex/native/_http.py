"""Minimal keep-alive HTTP/1.1 clients for the LM hot path (sync and asyncio).

Why not httpx: measured on this machine (bench/results/lm.md), an httpx
``Client.post`` adds ~150-250 µs per call over the bytes on the wire and the
async client more, which alone exceeds the ``Predict over HTTP`` budget
(+0.1 ms). LM calls need very little of HTTP: one POST of a JSON body to a
known host, a JSON reply with Content-Length (or chunked), keep-alive. So:

* sync: the stdlib ``http.client.HTTPConnection`` (well kept, TLS included),
  pooled per endpoint behind a lock, shared by all threads;
* async: asyncio streams, one pool per event loop (connections belong to the
  loop that opened them), with the same parser for the response head.

A reused connection that the server closed while idle is retried once on a
fresh connection (the request never reached the server). Errors surface as
``Timeout`` / ``ConnectError``; lm.py turns them into the dspex error family.
"""

from __future__ import annotations

import asyncio
import http.client
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


_STALE = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError, BrokenPipeError)
_ssl_context: ssl.SSLContext | None = None


def _ssl() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


class SyncPool:
    """Idle keep-alive connections to one endpoint, shared thread-safely."""

    def __init__(self, endpoint: Endpoint, max_idle: int = 64):
        self.endpoint = endpoint
        self.max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        ep = self.endpoint
        if ep.scheme == "https":
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=_ssl())
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        if conn is None:
            conn = self._new(timeout)
        while True:
            try:
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                else:
                    conn.timeout = timeout
                conn.request(method, path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
                keep = not resp.will_close
                out = Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
            except TimeoutError as exc:
                conn.close()
                raise Timeout(str(exc) or "timed out") from exc
            except _STALE as exc:
                conn.close()
                if reused:  # the server dropped an idle connection: try once on a new one
                    reused = False
                    conn = self._new(timeout)
                    continue
                raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ConnectError(f"{type(exc).__name__}: {exc}") from exc
            if keep:
                with self._lock:
                    if len(self._idle) < self.max_idle:
                        self._idle.append(conn)
                        conn = None
                if conn is not None:
                    conn.close()
            else:
                conn.close()
            return out

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
        return _AConn(reader, writer)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes, timeout: float) -> Response:
        loop = asyncio.get_running_loop()
        idle = self._by_loop.get(loop)
        if idle is None:
            with self._lock:
                idle = self._by_loop.setdefault(loop, [])
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.endpoint.host}:{self.endpoint.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}")
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
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
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"bad status line {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    keep = headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
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
