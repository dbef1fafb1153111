"""A real HTTP server on loopback that speaks the LM APIs dspex and DSPy call.

``FakeLMServer`` answers OpenAI chat completions (``POST /v1/chat/completions``
and ``/chat/completions``, ``GET /v1/models``) and Anthropic Messages
(``POST /v1/messages``) over raw HTTP/1.1 with keep-alive, from an asyncio loop
on a background thread (or in a subprocess, for benchmarks). Replies come from
a script (a queue of texts, :class:`Reply` and :class:`Fault` items), else from a
``responder(body) -> str`` hook, else from *autofill*: a valid ChatAdapter or
JSONAdapter reply for the output fields the prompt asks for.

    with FakeLMServer() as server:
        server.script(["[[ ## answer ## ]]\\n4", Fault.rate_limit(retry_after=1)])
        lm = dspex.LM("openai/fake", api_base=server.base_url)
        ...
        server.requests   # [{"path", "method", "headers", "json", "time"}, ...]

Run standalone: ``python -m dspex.testing.fake_server --port 0 --latency 0.05``
prints the base URL on stdout and serves until stdin closes or it is killed.
A subprocess server is driven through the same methods, over control routes
under ``/__fake/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ._autofill import autofill
from ._script import Fault, Reply, ScriptItem, item_from_dict

__all__ = ["FakeLMServer", "Fault", "RemoteFakeLMServer", "Reply"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


def _estimate_tokens(messages: Any) -> int:
    total = 0
    if isinstance(messages, list):
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else m
            total += len(str(content or ""))
    return max(1, total // 4)


class _State:
    """What the handlers read and tests write; guarded by one lock."""

    def __init__(self, latency: float, responder: Callable[[dict[str, Any]], str] | None, autofill: bool):
        self.lock = threading.Lock()
        self.script: deque[ScriptItem] = deque()
        self.requests: list[dict[str, Any]] = []
        self.latency = latency
        self.responder = responder
        self.autofill = autofill
        self.log_limit = 100_000  # bounded: a long benchmark must not grow memory without end
        self.ids = itertools.count(1)


class _Protocol:
    """HTTP/1.1 with keep-alive over asyncio streams, one task per connection."""

    def __init__(self, state: _State, remote_control: bool):
        self.state = state
        self.remote_control = remote_control
        self.tasks: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, path, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                lower: dict[str, str] = {}
                for line in lines[1:]:
                    if not line:
                        continue
                    name, _, value = line.partition(":")
                    headers[name.strip()] = value.strip()
                    lower[name.strip().lower()] = value.strip()
                if lower.get("transfer-encoding", "").lower() == "chunked":
                    body = await self._read_chunked(reader)
                else:
                    body = await reader.readexactly(int(lower.get("content-length", "0") or 0))
                keep_alive = lower.get("connection", "").lower() != "close" and version != "HTTP/1.0"
                if lower.get("expect", "").lower() == "100-continue":
                    pass  # bodies were already read; clients here never wait for 100
                result = await self.respond(method, path.split("?", 1)[0], headers, body)
                if result is None:  # Fault.close
                    return
                status, payload, extra = result
                out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "Content-Type: application/json"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                out.append(f"Content-Length: {len(payload)}")
                out.append("Connection: keep-alive" if keep_alive else "Connection: close")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # client went away, or the server is stopping
        finally:
            if task is not None:
                self.tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]] | None:
        state = self.state
        if path.startswith("/__fake/"):
            if not self.remote_control:
                return 404, b'{"error": "control routes are off"}', {}
            return self.control(path, body)
        if method == "GET" and path in ("/v1/models", "/models"):
            return 200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "dspex"}]}).encode(), {}
        anthropic = path in ("/v1/messages", "/messages")
        if method != "POST" or not (anthropic or path in ("/v1/chat/completions", "/chat/completions")):
            return 404, json.dumps({"error": {"message": f"no route {method} {path}", "type": "not_found"}}).encode(), {}
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            return 400, b'{"error": {"message": "request body is not JSON", "type": "invalid_request_error"}}', {}
        now = time.monotonic()
        with state.lock:
            if len(state.requests) >= state.log_limit:
                del state.requests[: state.log_limit // 2]
            state.requests.append(
                {"path": path, "method": method, "headers": headers, "json": data, "time": now, "wall": time.time()}
            )
            item: ScriptItem | None = state.script.popleft() if state.script else None
            latency = state.latency
            responder = state.responder
            do_autofill = state.autofill
        if isinstance(item, Fault):
            return await self.fault(item, anthropic, latency)
        if isinstance(item, Reply):
            reply = item
        elif isinstance(item, str):
            reply = Reply(item)
        elif responder is not None:
            try:
                reply = Reply(str(responder(data)))
            except Exception as exc:  # the hook's bug becomes a visible 500
                return 500, json.dumps({"error": {"message": f"responder raised {exc!r}", "type": "server_error"}}).encode(), {}
        elif do_autofill:
            reply = Reply(autofill(data.get("messages") or []))
        else:
            return 500, b'{"error": {"message": "fake server script is empty and autofill is off", "type": "server_error"}}', {}
        delay = reply.latency if reply.latency is not None else latency
        if delay:
            await asyncio.sleep(delay)
        return 200, self.success(reply, data, anthropic), {}

    def success(self, reply: Reply, data: dict[str, Any], anthropic: bool) -> bytes:
        n = int(data.get("n") or 1)
        texts = reply.texts or [reply.text] * n
        prompt = _estimate_tokens(data.get("messages")) + (_estimate_tokens([{"content": data.get("system")}]) if anthropic and data.get("system") else 0)
        completion = max(1, sum(len(t) for t in texts) // 4)
        if reply.usage:
            prompt = reply.usage.get("prompt_tokens", reply.usage.get("input_tokens", prompt))
            completion = reply.usage.get("completion_tokens", reply.usage.get("output_tokens", completion))
        rid = next(self.state.ids)
        model = data.get("model", "fake")
        if anthropic:
            return json.dumps(
                {
                    "id": f"msg_fake_{rid}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": texts[0]}],
                    "stop_reason": "end_turn" if reply.finish_reason == "stop" else reply.finish_reason,
                    "stop_sequence": None,
                    "usage": {"input_tokens": prompt, "output_tokens": completion},
                }
            ).encode()
        return json.dumps(
            {
                "id": f"chatcmpl-fake-{rid}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": t},
                        "logprobs": None,
                        "finish_reason": reply.finish_reason,
                    }
                    for i, t in enumerate(texts)
                ],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            }
        ).encode()

    async def fault(self, fault: Fault, anthropic: bool, latency: float) -> tuple[int, bytes, dict[str, str]] | None:
        if fault.kind == "hang":
            await asyncio.sleep(fault.latency if fault.latency is not None else 3600.0)
            return 200, json.dumps({"error": "hang ended"}).encode(), {}
        delay = fault.latency if fault.latency is not None else latency
        if delay:
            await asyncio.sleep(delay)
        if fault.kind == "close":
            return None
        if fault.kind == "malformed":
            return 200, b'{"id": "chatcmpl-broken", "choices": [{"message": ', {}
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        body = fault.body
        if isinstance(body, dict) and "context_window" in body:
            style = body["context_window"]
            if style == "auto":
                style = "anthropic" if anthropic else "openai"
            body = {
                "openai": {"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
                "llamacpp": {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 2048}},
                "anthropic": {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"}},
            }[style]
        elif isinstance(body, dict) and fault.http_status != 200:
            body = {"type": "error", "error": body} if anthropic else {"error": body}
        payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return fault.http_status, payload, headers

    def control(self, path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        state = self.state
        data = json.loads(body) if body else {}
        with state.lock:
            if path == "/__fake/script":
                items = [item_from_dict(i) if isinstance(i, dict) else str(i) for i in data.get("items", [])]
                if not data.get("append"):
                    state.script.clear()
                state.script.extend(items)
            elif path == "/__fake/requests":
                return 200, json.dumps(state.requests).encode(), {}
            elif path == "/__fake/reset":
                state.script.clear()
                state.requests.clear()
                state.latency = float(data.get("latency", 0.0))
            elif path == "/__fake/latency":
                state.latency = float(data["latency"])
            else:
                return 404, b'{"error": "unknown control route"}', {}
        return 200, b'{"ok": true}', {}


class FakeLMServer:
    """A fake OpenAI / Anthropic server on 127.0.0.1, run on a background thread.

    ``latency`` delays every reply (seconds), ``responder(body) -> str`` computes
    replies when the script is empty, ``autofill`` (default on) fills the
    requested output fields when there is neither. Use as a context manager or
    call ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        latency: float = 0.0,
        responder: Callable[[dict[str, Any]], str] | None = None,
        autofill: bool = True,
        remote_control: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._port = port
        self._ssl = ssl_context  # serve HTTPS (tests of TLS with a private CA)
        self._state = _State(latency, responder, autofill)
        self._remote_control = remote_control
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._protocol = _Protocol(self._state, remote_control)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    # lifecycle ---------------------------------------------------------------
    def start(self) -> FakeLMServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="dspex-fake-lm", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"FakeLMServer failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._protocol.handle, "127.0.0.1", self._port, backlog=1024, limit=1 << 22, ssl=self._ssl
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for task in list(self._protocol.tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*self._protocol.tasks, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def _shutdown() -> None:
            if self._server is not None:
                self._server.close()
            loop.stop()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_shutdown)
        thread.join(10)
        self._thread = None
        self._loop = None

    close = stop

    def __enter__(self) -> FakeLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # what tests use ------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (the OpenAI-style api_base; https with ``ssl_context=``)."""
        return f"{self.url}/v1"

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A copy of the request log: ``{"path", "method", "headers", "json", "time", "wall"}``."""
        with self._state.lock:
            return list(self._state.requests)

    def script(self, items: Iterable[ScriptItem], *, append: bool = False) -> None:
        """Queue replies, consumed one per request in order. Replaces the queue unless ``append``."""
        items = list(items)
        for item in items:
            if not isinstance(item, str | Reply | Fault):
                raise TypeError(f"script items are str, Reply or Fault, not {type(item).__name__}")
        with self._state.lock:
            if not append:
                self._state.script.clear()
            self._state.script.extend(items)

    @property
    def pending(self) -> int:
        """How many scripted items are still queued."""
        with self._state.lock:
            return len(self._state.script)

    @property
    def latency(self) -> float:
        return self._state.latency

    @latency.setter
    def latency(self, value: float) -> None:
        with self._state.lock:
            self._state.latency = float(value)

    @property
    def responder(self) -> Callable[[dict[str, Any]], str] | None:
        return self._state.responder

    @responder.setter
    def responder(self, fn: Callable[[dict[str, Any]], str] | None) -> None:
        with self._state.lock:
            self._state.responder = fn

    @property
    def autofill(self) -> bool:
        return self._state.autofill

    @autofill.setter
    def autofill(self, on: bool) -> None:
        with self._state.lock:
            self._state.autofill = bool(on)

    def reset(self) -> None:
        """Empty the script and the log; latency 0, no responder, autofill on."""
        with self._state.lock:
            self._state.script.clear()
            self._state.requests.clear()
            self._state.latency = 0.0
            self._state.responder = None
            self._state.autofill = True

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.requests.clear()

    @staticmethod
    def subprocess(*, latency: float = 0.0, port: int = 0, python: str | None = None) -> RemoteFakeLMServer:
        """Start the server in its own process (no shared GIL); stop it with ``close()``."""
        return RemoteFakeLMServer(latency=latency, port=port, python=python)

    def __repr__(self) -> str:
        return f"FakeLMServer({self.base_url if self.port else 'not started'})"


class RemoteFakeLMServer:
    """A FakeLMServer in a child process, driven over its ``/__fake/`` control routes."""

    def __init__(self, *, latency: float = 0.0, port: int = 0, python: str | None = None):
        cmd = [python or sys.executable, "-m", "dspex.testing.fake_server", "--port", str(port), "--latency", str(latency)]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            err = self._proc.stderr.read() if self._proc.stderr else ""
            self._proc.kill()
            raise RuntimeError(f"fake server subprocess did not start: {line!r} {err[-2000:]}")
        self.base_url = line
        self.url = line[: -len("/v1")]
        self.port = int(self.url.rsplit(":", 1)[1])
        self.pid = self._proc.pid

    def _post(self, route: str, data: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            f"{self.url}/__fake/{route}", data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def script(self, items: Iterable[ScriptItem], *, append: bool = False) -> None:
        encoded = [i if isinstance(i, str) else i.to_dict() for i in items]
        self._post("script", {"items": encoded, "append": append})

    @property
    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._post("requests", {})
        return result

    def reset(self, latency: float = 0.0) -> None:
        self._post("reset", {"latency": latency})

    def set_latency(self, latency: float) -> None:
        self._post("latency", {"latency": latency})

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(3)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    stop = close

    def __enter__(self) -> RemoteFakeLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="dspex fake LM server (OpenAI + Anthropic APIs) on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--no-autofill", action="store_true")
    args = parser.parse_args(argv)
    server = FakeLMServer(port=args.port, latency=args.latency, autofill=not args.no_autofill, remote_control=True)
    server.start()
    print(server.base_url, flush=True)
    try:
        # Serve until the parent closes our stdin (or dies): no orphan servers.
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
