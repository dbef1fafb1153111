"""A loopback HTTP server that misbehaves on purpose, for the LM client's fault tests.

Each request on each (kept-alive) connection is handed to a *behaviour*
``behave(ex, request) -> None`` that writes whatever bytes it likes to
``ex.sock``: a reply one byte at a time, endless headers, a ``100 Continue``
before the reply, a huge head, bad usage numbers... Ready-made behaviours
are the functions below; :func:`chat_reply` builds a well-formed reply.

    with HostileServer(trickle(every=0.5)) as server:
        dspex.LM("openai/x", api_base=server.base_url, timeout=2).complete(...)

The default reply text echoes the last message of the request, so a reply
delivered to the wrong call is visible. ``server.requests`` logs the JSON bodies.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "Exchange",
    "HostileServer",
    "bad_usage",
    "big_body",
    "chat_reply",
    "continue_100",
    "echo",
    "endless_headers",
    "huge_head",
    "trickle",
]


def chat_reply(text: str, *, usage_json: str = '{"prompt_tokens": 3, "completion_tokens": 2}', extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 200 chat-completion reply; ``usage_json`` is spliced in verbatim."""
    body = (
        '{"id": "x", "object": "chat.completion", "model": "hostile", "choices": [{"index": 0, '
        f'"message": {{"role": "assistant", "content": {json.dumps(text)}}}, "finish_reason": "stop"}}], '
        f'"usage": {usage_json}}}'
    ).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


def _last_text(request: dict[str, Any]) -> str:
    messages = request.get("messages") or [{}]
    return str(messages[-1].get("content", ""))


class Exchange:
    """One connection as a behaviour sees it: the socket and whether the server is stopping."""

    def __init__(self, sock: socket.socket, server: HostileServer):
        self.sock = sock
        self.server = server

    @property
    def stopping(self) -> bool:
        return self.server._stop.is_set()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pause(self, seconds: float) -> None:
        self.server._stop.wait(seconds)


Behaviour = Callable[[Exchange, dict[str, Any]], None]


def echo() -> Behaviour:
    def behave(ex: Exchange, req: dict[str, Any]) -> None:
        ex.send(chat_reply(_last_text(req)))

    return behave


def trickle(every: float = 0.5, *, total_bytes: int | None = None) -> Behaviour:
    """The reply (or ``total_bytes`` of padding header first), one byte every ``every`` seconds."""

    def behave(ex: Exchange, req: dict[str, Any]) -> None:
        data = chat_reply(_last_text(req), extra_headers="X-Pad: " + "p" * (total_bytes or 0) + "\r\n")
        for i in range(len(data)):
            if ex.stopping:
                return
            ex.send(data[i : i + 1])
            ex.pause(every)

    return behave


def endless_headers(every: float = 0.0) -> Behaviour:
    """A status line, then header lines forever (until the client hangs up)."""

    def behave(ex: Exchange, req: dict[str, Any]) -> None:
        ex.send(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Endless: " + b"e" * 1000 + b"\r\n"
        while not ex.stopping:
            ex.send(line * 16)
            if every:
                ex.pause(every)

    return behave


def huge_head(size: int) -> Behaviour:
    """A valid reply whose head carries ``size`` bytes of headers."""

    def behave(ex: Exchange, req: dict[str, Any]) -> None:
        lines = "".join(f"X-Big-{i}: {'h' * 990}\r\n" for i in range(size // 1000 + 1))
        ex.send(chat_reply(_last_text(req), extra_headers=lines))

    return behave


def continue_100(*, early_hints: bool = False) -> Behaviour:
    """``100 Continue`` (and optionally ``103 Early Hints``) before every reply, in one write."""

    def behave(ex: Exchange, req: dict[str, Any]) -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        if early_hints:
            interim += b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
        ex.send(interim + chat_reply(_last_text(req)))

    return behave


def bad_usage(usage_json: str) -> Behaviour:
    def behave(ex: Exchange, req: dict[str, Any]) -> None:
        ex.send(chat_reply(_last_text(req), usage_json=usage_json))

    return behave


def big_body(size: int, *, chunked: bool = False, chunk: int = 1 << 16) -> Behaviour:
    """A reply whose text is ``size`` bytes of "x", with Content-Length or chunked."""

    def behave(ex: Exchange, req: dict[str, Any]) -> None:
        # built as bytes in one go: the server must not be the slow side of a large-body test
        body = b'{"model": "hostile", "choices": [{"message": {"content": "' + b"x" * size + b'"}}]}'
        framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}".encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + framing
        if not chunked:
            ex.send(head + b"\r\n\r\n")
            ex.send(body)
            return
        ex.send(head + b"\r\n\r\n")
        for i in range(0, len(body), chunk):
            piece = body[i : i + chunk]
            ex.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        ex.send(b"0\r\n\r\n")

    return behave


class HostileServer:
    """Threads on 127.0.0.1 that read requests and let a behaviour answer them."""

    def __init__(self, behave: Behaviour | None = None):
        self.behave = behave or echo()
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostileServer:
        t = threading.Thread(target=self._accept, name="dspex-hostile-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        deadline = time.monotonic() + 5
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._socks.append(sock)
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(sock,), name="dspex-hostile-conn", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        ex = Exchange(sock, self)
        buf = b""
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                try:
                    req = json.loads(body) if body else {}
                except ValueError:
                    req = {}
                with self._lock:
                    self.requests.append(req)
                self.behave(ex, req)
        except OSError:
            return
        finally:
            sock.close()
