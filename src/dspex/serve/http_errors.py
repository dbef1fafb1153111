"""Exceptions -> HTTP answers: status, a JSON error body, Retry-After where retrying helps.

Bodies carry the error's type, its message and a fix; never a traceback, a remote
traceback, an LM response body or a header value. Anything unexpected is a 500 that
names the request id (the server log has the traceback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .. import errors as E
from .targets import OutputMismatch
from .validation import InvalidInputs

__all__ = ["HTTPProblem", "problem_for"]


@dataclass
class HTTPProblem(Exception):
    """An answer that is not a 200: ``status``, ``type``, ``message``, ``fix``."""

    status: int
    type: str
    message: str
    fix: str = ""
    retry_after: float | None = None
    fields: list[dict[str, str]] = field(default_factory=list)
    retryable: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message, "fix": self.fix,
                               "retryable": self.retryable or self.retry_after is not None}
        if self.fields:
            err["fields"] = self.fields
        return {"error": err, "request_id": request_id}

    def all_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.retry_after is not None:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out


def _short(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# (class, status, fix); the first match wins, so subclasses come before their bases.
_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (E.LMRateLimited, 429, "the LM is rate-limiting; retry after Retry-After"),
    (E.PoolOverloaded, 503, "the worker pool's queue is full; retry after Retry-After"),
    (E.LMTimeout, 504, "the LM did not answer in time; retry, or raise the LM timeout"),
    (E.CallTimeout, 504, "the worker did not finish in time (it was replaced); retry"),
    (E.StepTimeout, 504, "a pipeline step ran past its timeout; retry, or raise the step's timeout="),
    (E.LMAuthError, 502, "the service's LM credentials were refused; the operator must fix the LM key"),
    (E.ContextWindowExceeded, 422, "the inputs are too long for the model; shorten them"),
    (E.LMTransportError, 503, "the LM endpoint is unreachable; retry later"),
    (E.LMError, 502, "the LM call failed; retry, or report it with the request id"),
    (E.WorkerCrashed, 502, "the worker crashed and is being replaced; retry"),
    (E.SessionLost, 409, "the session's worker is gone and its state with it; start a new session"),
    (E.PoolClosed, 503, "the service is shutting down; retry on another instance"),
    (E.PoolError, 503, "the worker pool failed; retry, or report it with the request id"),
    (E.ParseError, 502, "the LM's reply did not fit the signature; retry or use a stronger model"),
    (E.CheckFailed, 502, "the program's output check kept failing; retry"),
    (E.RemoteError, 502, "the program raised in its worker; report it with the request id"),
    (E.ImplementationUnavailable, 503, "the service lacks a component for this program; see `dspex doctor`"),
    (E.LocalModelError, 503, "the embedded model is not available; the operator should run `dspex doctor`"),
)

_RETRY_STATUS = {429, 503}


def _public_message(exc: BaseException) -> str:
    """What a client may see: LM and worker errors by kind only (their text can quote
    provider bodies, prompts or remote code); dspex's own errors by their message."""
    if isinstance(exc, E.RemoteError):
        return f"the program raised {exc.remote_type} in its worker"
    if isinstance(exc, E.LMError):
        status = f" (HTTP {exc.status})" if exc.status else ""
        return f"the LM call failed: {type(exc).__name__}{status}"
    return _short(exc)


def problem_for(exc: BaseException, *, retry_after_s: float = 1.0) -> HTTPProblem:
    """The HTTP answer for an exception raised while running a program or pipeline."""
    if isinstance(exc, HTTPProblem):
        return exc
    if isinstance(exc, InvalidInputs):
        return HTTPProblem(422, "InvalidInputs", f"the inputs do not fit the signature: {_short(exc)}",
                           "send every required field with the type the OpenAPI schema gives", fields=exc.fields)
    if isinstance(exc, E.StepFailed) and isinstance(exc.cause, BaseException):
        inner = problem_for(exc.cause, retry_after_s=retry_after_s)
        inner.message = f"pipeline step {exc.step!r} failed: {inner.message}"
        return inner
    if isinstance(exc, E.PipelineError):
        fields = [{"field": p.split("'")[1] if p.count("'") >= 2 else "(input)", "problem": p} for p in exc.problems]
        return HTTPProblem(422, "PipelineError", _short(exc), "send the inputs the pipeline reads", fields=fields)
    if isinstance(exc, OutputMismatch):
        return HTTPProblem(502, "OutputMismatch", _short(exc), "the program must return what its signature says")
    if isinstance(exc, TimeoutError):  # the endpoint's own timeout_s (asyncio.timeout)
        return HTTPProblem(504, "Timeout", "the program did not finish within the endpoint's timeout", "retry later")
    for cls, status, fix in _TABLE:
        if isinstance(exc, cls):
            retry = None
            if status in _RETRY_STATUS:
                hinted = getattr(exc, "retry_after", None)
                retry = float(hinted) if isinstance(hinted, (int, float)) and hinted > 0 else retry_after_s
            return HTTPProblem(status, type(exc).__name__, _public_message(exc), fix, retry_after=retry,
                               retryable=bool(getattr(exc, "retryable", False)))
    return HTTPProblem(500, "InternalError", "the program failed unexpectedly",
                       "report it with the request id (the server log has the details)")
