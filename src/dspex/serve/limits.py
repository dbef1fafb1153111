"""Bounds of the service: calls in flight (no queue: over the bound is an instant 429)
and the request body size (413 as soon as it is known to be too large)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .http_errors import HTTPProblem

__all__ = ["InFlight", "read_json_body"]


class InFlight:
    """A counter of running calls on one event loop; ``try_enter`` never waits."""

    def __init__(self, limit: int, retry_after_s: float):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.count = 0

    def enter(self) -> None:
        if self.count >= self.limit:
            raise HTTPProblem(429, "TooManyRequests",
                              f"the service is running its limit of {self.limit} calls",
                              "retry after Retry-After seconds, or lower your concurrency",
                              retry_after=self.retry_after_s)
        self.count += 1

    def leave(self) -> None:
        self.count -= 1


def _too_large(limit: int) -> HTTPProblem:
    return HTTPProblem(413, "BodyTooLarge", f"the request body is larger than {limit} bytes",
                       "send smaller inputs (the operator sets max_body_bytes)")


async def read_json_body(request: Request, limit: int) -> Any:
    """The parsed JSON body, read up to ``limit`` bytes."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPProblem(415, "UnsupportedMediaType", f"the body must be application/json, not {ctype[:60]!r}",
                          "send Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPProblem(400, "BadRequest", "Content-Length is not a number", "send a valid request") from None
        if size > limit:
            raise _too_large(limit)
        raw = await request.body()  # the server delivers at most Content-Length bytes
    else:  # chunked: count while reading
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        raw = b"".join(chunks)
    if not raw.strip():
        raise HTTPProblem(400, "BadRequest", "the request body is empty",
                          'send a JSON object of the input fields, e.g. {"question": "..."}')
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise HTTPProblem(400, "MalformedJSON", f"the request body is not valid JSON{where}",
                          "send a JSON object of the input fields") from None
