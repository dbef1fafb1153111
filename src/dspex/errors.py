"""The one exception tree of dspex.

    DspexError                      base of everything dspex raises on purpose
    ├── ConfigError                 bad dspex.toml / [tool.dspex] / option value
    ├── SignatureError   (ValueError)  bad signature spec; .spec, .position
    ├── TemplateError    (ValueError)  unknown or malformed placeholder; .placeholder, .position
    ├── ParseError       (ValueError)  LM reply could not be parsed; .raw, .found, .missing
    ├── CheckFailed                 an output check kept failing; .attempts, .feedback, .prediction
    ├── InputError       (TypeError)   missing, extra or mistyped predictor inputs; .problems
    ├── LMError                     an LM call failed; .status, .retry_after, .model
    │   ├── LMRateLimited           429 (retryable, honours Retry-After)
    │   ├── LMTimeout (TimeoutError) no reply in time (retryable)
    │   ├── LMAuthError             401/403: missing or wrong API key
    │   ├── ContextWindowExceeded   prompt + max_tokens too long for the model
    │   ├── LMBadResponse           malformed body, 4xx/5xx that is not one of the above
    │   └── LMTransportError        connection refused/reset, DNS (retryable)
    ├── PoolError                   a worker-pool call failed; .pool
    │   ├── WorkerStartError        a worker failed its ready handshake; .stderr_tail
    │   ├── WorkerCrashed           the worker died during the call; .pid, .exitcode (retryable)
    │   ├── CallTimeout (TimeoutError) call passed its deadline; worker was replaced (retryable)
    │   ├── PoolOverloaded          queue full, rejected at once (retryable)
    │   ├── SessionLost             a strict session's worker died; its state is gone
    │   ├── PoolClosed              the pool is closed or closing
    │   ├── ProtocolError           malformed or oversized frame
    │   └── HandlerNotFound         no handler of that name in the pool
    ├── RemoteError                 a handler raised in a worker; .remote_type, .remote_traceback
    ├── ImplementationUnavailable   the router cannot run this here; says what to install
    ├── PipelineError               a pipeline is miswired; .problems lists them all
    ├── StepFailed                  a pipeline step failed at run time; .step, .cause
    ├── StepTimeout (TimeoutError)  a pipeline step passed its timeout= (retryable); .step, .timeout
    └── LocalModelError             the embedded model is missing or would not start

Every class has ``retryable``: True where trying the same call again can succeed
(pipelines and LM clients retry only those). Messages say what went wrong and
what to do about it.
"""

from __future__ import annotations

from typing import Any

__all__ = [  # noqa: RUF022 - in the order of the tree drawn above
    "DspexError",
    "ConfigError",
    "SignatureError",
    "TemplateError",
    "ParseError",
    "CheckFailed",
    "InputError",
    "LMError",
    "LMRateLimited",
    "LMTimeout",
    "LMAuthError",
    "ContextWindowExceeded",
    "LMBadResponse",
    "LMTransportError",
    "PoolError",
    "WorkerStartError",
    "WorkerCrashed",
    "CallTimeout",
    "PoolOverloaded",
    "SessionLost",
    "PoolClosed",
    "ProtocolError",
    "HandlerNotFound",
    "RemoteError",
    "ImplementationUnavailable",
    "PipelineError",
    "StepFailed",
    "StepTimeout",
    "LocalModelError",
]


class DspexError(Exception):
    """Base class of every error dspex raises on purpose."""

    retryable: bool = False


class ConfigError(DspexError, ValueError):
    """A configuration file or option value is invalid."""


class SignatureError(DspexError, ValueError):
    """A signature spec is invalid. ``position`` is the 0-based offset in ``spec``."""

    def __init__(self, message: str, spec: str | None = None, position: int | None = None):
        self.spec = spec
        self.position = position
        detail = message
        if spec is not None and position is not None:
            detail = f"{message} at position {position} in {spec!r}"
        elif spec is not None:
            detail = f"{message} in {spec!r}"
        super().__init__(detail)


class TemplateError(DspexError, ValueError):
    """A template has an unknown or malformed placeholder."""

    def __init__(self, message: str, placeholder: str | None = None, position: int | None = None):
        self.placeholder = placeholder
        self.position = position
        super().__init__(message)


class ParseError(DspexError, ValueError):
    """An LM reply could not be parsed into the signature's output fields.

    ``raw`` is the reply text, ``found`` the fields that were parsed, ``missing``
    the output fields that were absent or invalid.
    """

    def __init__(
        self,
        message: str,
        raw: str = "",
        found: dict[str, Any] | None = None,
        missing: list[str] | None = None,
        adapter: str | None = None,
    ):
        self.raw = raw
        self.found = dict(found or {})
        self.missing = list(missing or [])
        self.adapter = adapter
        super().__init__(message)


class CheckFailed(DspexError):
    """A predictor's output check kept failing after ``attempts`` tries."""

    def __init__(self, message: str, attempts: int, feedback: str = "", prediction: Any = None):
        self.attempts = attempts
        self.feedback = feedback
        self.prediction = prediction
        super().__init__(message)


class InputError(DspexError, TypeError):
    """A predictor got missing, extra or mistyped inputs. ``problems`` names each field."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message)


class LMError(DspexError):
    """An LM call failed. ``status`` is the HTTP status when there was one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        model: str | None = None,
        body: str | None = None,
    ):
        self.status = status
        self.retry_after = retry_after
        self.model = model
        self.body = body
        super().__init__(message)


class LMRateLimited(LMError):
    retryable = True


class LMTimeout(LMError, TimeoutError):
    retryable = True


class LMAuthError(LMError):
    pass


class ContextWindowExceeded(LMError):
    pass


class LMBadResponse(LMError):
    pass


class LMTransportError(LMError):
    retryable = True


class PoolError(DspexError):
    """A worker-pool call failed. ``pool`` names the pool."""

    def __init__(self, message: str, *, pool: str | None = None, **info: Any):
        self.pool = pool
        self.info = info
        for key, value in info.items():
            setattr(self, key, value)
        super().__init__(message)


class WorkerStartError(PoolError):
    """A worker failed to start. ``stderr_tail`` holds the end of its stderr."""


class WorkerCrashed(PoolError):
    retryable = True


class CallTimeout(PoolError, TimeoutError):
    retryable = True


class PoolOverloaded(PoolError):
    retryable = True


class SessionLost(PoolError):
    pass


class PoolClosed(PoolError):
    pass


class ProtocolError(PoolError):
    pass


class HandlerNotFound(PoolError):
    pass


class RemoteError(DspexError):
    """A handler raised inside a worker (or a host callback raised for a worker).

    ``remote_type`` is the qualified name of the original exception type and
    ``remote_traceback`` its formatted traceback text. ``code`` / ``detail`` are the
    structured part of the error frame (``detail["code"]``), set when the handler tagged
    its exception (see ``dspex.pool.protocol``); ``None`` otherwise.
    """

    def __init__(
        self, remote_type: str, message: str, remote_traceback: str = "", *, detail: dict[str, Any] | None = None
    ):
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        self.detail = detail
        self.code: str | None = None if detail is None else str(detail.get("code"))
        super().__init__(f"{remote_type}: {message}")


class ImplementationUnavailable(DspexError):
    """The router cannot run an operation with what is installed or configured."""


class PipelineError(DspexError):
    """A pipeline is miswired. ``problems`` lists every problem found."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in pipeline:\n{lines}")


class StepFailed(DspexError):
    """A pipeline step failed while running. The original error is ``cause``."""

    def __init__(self, step: str, cause: BaseException):
        self.step = step
        self.cause = cause
        self.retryable = bool(getattr(cause, "retryable", False))
        super().__init__(f"step {step!r} failed: {type(cause).__name__}: {cause}")


class StepTimeout(DspexError, TimeoutError):
    """A pipeline step ran past its ``timeout=``; it was cancelled (retryable)."""

    retryable = True

    def __init__(self, step: str, timeout: float):
        self.step = step
        self.timeout = timeout
        super().__init__(f"step {step!r} did not finish within its timeout of {timeout:g}s; "
                         "raise timeout= or make the step faster")


class LocalModelError(DspexError):
    """The embedded local model is missing or would not start."""
