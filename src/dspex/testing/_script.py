"""Script items for ``FakeLMServer``: a scripted ``Reply`` and a scripted ``Fault``, and their
JSON form (a subprocess server receives its script over the control routes)."""

from __future__ import annotations

import email.utils
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Fault", "Reply", "ScriptItem", "item_from_dict"]


@dataclass
class Reply:
    """One scripted successful reply. ``texts`` gives one text per choice (``n``)."""

    text: str = ""
    latency: float | None = None
    usage: dict[str, int] | None = None
    finish_reason: str = "stop"
    texts: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "reply", **asdict(self)}


@dataclass
class Fault:
    """One scripted failure. Build with the class methods."""

    kind: str  # "status" | "hang" | "malformed" | "close"
    http_status: int = 500
    body: Any = None
    retry_after: Any = None  # seconds (number) or an HTTP-date string
    latency: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0, *, http_date: bool = False) -> Fault:
        """429 with ``Retry-After`` in seconds (or as an HTTP date when ``http_date``)."""
        value: Any = retry_after
        if retry_after is not None and http_date:
            value = email.utils.formatdate(time.time() + retry_after, usegmt=True)
        return cls("status", 429, {"message": "Rate limit reached (fake)", "type": "rate_limit_error"}, value)

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls("status", status, {"message": "The server had an error (fake)", "type": "server_error"})

    @classmethod
    def status(cls, status: int, body: Any = None) -> Fault:
        """Any status. ``body``: a dict (sent as JSON) or a string (sent as is)."""
        return cls("status", status, body if body is not None else {"message": f"fake status {status}"})

    @classmethod
    def auth(cls) -> Fault:
        return cls("status", 401, {"message": "Incorrect API key provided (fake)", "type": "invalid_request_error", "code": "invalid_api_key"})

    @classmethod
    def context_window(cls, style: str = "auto") -> Fault:
        """400 "prompt too long", in the shape of ``style``: openai, llamacpp or anthropic (auto = by path)."""
        return cls("status", 400, {"context_window": style})

    @classmethod
    def hang(cls, seconds: float | None = None) -> Fault:
        """Accept the request and never answer (or answer 200 after ``seconds``)."""
        return cls("hang", latency=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        """200 with a body that is not JSON."""
        return cls("malformed", 200)

    @classmethod
    def wrong_shape(cls) -> Fault:
        """200 with JSON that is not a chat completion."""
        return cls("status", 200, {"unexpected": True})

    @classmethod
    def close(cls) -> Fault:
        """Close the connection without answering."""
        return cls("close")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "fault", **asdict(self)}


def item_from_dict(d: dict[str, Any]) -> Reply | Fault | str:
    d = dict(d)
    kind = d.pop("type", None)
    if kind == "reply":
        return Reply(**d)
    if kind == "fault":
        return Fault(**d)
    raise ValueError(f"unknown script item {d!r}")


ScriptItem = str | Reply | Fault
