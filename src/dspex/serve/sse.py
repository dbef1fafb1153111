"""Server-sent events: the wire format, pipeline events as JSON, and a response that
stops its producer when the client goes away.

Events of one call: ``start`` {request_id, endpoint, session}; ``step`` per pipeline
event (started, progress, retrying, finished, failed); ``progress`` per worker
``ctx.progress`` event; ``chunk`` {index, value} per chunk of a streaming handler
(``stream = true``); ``output`` {field, value} per
output field; then ``done`` {outputs, trace} or ``error`` {status, error}. A ``: ping``
comment goes out every ``ping_s`` while nothing else does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from .._cli.common import to_jsonable

__all__ = ["EventStreamResponse", "event_json", "format_event", "watch_disconnect"]


def format_event(event: str, data: Any) -> bytes:
    body = json.dumps(to_jsonable(data), ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n".encode()


def event_json(ev: Any) -> dict[str, Any]:
    """A pipeline ``Event`` as JSON: its type, step, path and the fields a client can use."""
    out: dict[str, Any] = {"type": type(ev).__name__, "step": getattr(ev, "step", ""),
                           "path": getattr(ev, "path", ""), "time": getattr(ev, "time", None)}
    for name in ("kind", "where", "pid", "duration_s", "cached", "attempt", "delay_s", "data", "outputs",
                 "cancelled"):
        if hasattr(ev, name):
            out[name] = getattr(ev, name)
    err = getattr(ev, "error", None)
    if err is not None:
        out["error"] = type(err).__name__ if isinstance(err, BaseException) else str(err)[:200]
    return out


async def watch_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (the request body must already be read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStreamResponse:
    """``text/event-stream`` from an async iterator of bytes; a disconnect cancels it.

    Starlette's StreamingResponse only notices a gone client on its next write (ASGI
    2.4), which for a silent pipeline step may be minutes; this one listens for it."""

    def __init__(self, events: AsyncIterator[bytes], *, headers: dict[str, str] | None = None,
                 ping_s: float = 15.0, on_disconnect: Callable[[], None] | None = None,
                 on_close: Callable[[], None] | None = None):
        self.events = events
        self.on_close = on_close
        self.headers = {"cache-control": "no-store", "x-accel-buffering": "no", **(headers or {})}
        self.ping_s = ping_s
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _respond(self, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        producer = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(watch_disconnect(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone = watcher.done() and not producer.done()
            for t in (producer, watcher):
                t.cancel()
            for t in (producer, watcher):
                with contextlib.suppress(asyncio.CancelledError, OSError, Exception):
                    await t
            if gone and self.on_disconnect is not None:
                self.on_disconnect()
        if not gone:
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        it = self.events.__aiter__()
        nxt: asyncio.Future[bytes] | None = None
        try:
            while True:
                if nxt is None:
                    nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({nxt}, timeout=self.ping_s)
                if not done:
                    await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                    continue
                try:
                    chunk = nxt.result()
                except StopAsyncIteration:
                    return
                nxt = None
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            if nxt is not None and not nxt.done():
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()
