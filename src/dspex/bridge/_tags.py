"""Errors leaving the bridge: tagged with a wire code, scrubbed of secrets (worker side).

Every handler in ``dspy_handlers`` runs under :func:`tagged`: a DSPy parse or LM error
leaves as a :class:`dspex.wire.WireError` whose ``wire_code`` / ``wire_detail`` the worker
puts in the error frame (the host maps the code to a dspex type in
``router.results.from_remote``), with every secret of this worker's environment replaced
by ``***``, so a provider error that echoes an API key never reaches the host, its logs or
the CLI. Such errors are not chained (the original's text may hold the key). Any other
exception leaves as it is unless its text or traceback holds a secret.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from ..wire import E, WireError, env_secrets, scrub

__all__ = ["key_env", "tag", "tagged"]

F = TypeVar("F", bound=Callable[..., Any])

# Names of the variables LM specs read their keys from (api_key_env): scrubbed too, whatever
# they are called. Bounded by the specs a worker sees.
_KEY_ENVS: set[str] = set()


def key_env(spec: Any) -> None:
    """Remember the key variable an LM spec names (so its value is scrubbed from errors)."""
    if isinstance(spec, dict) and isinstance(spec.get("api_key_env"), str) and len(_KEY_ENVS) < 64:
        _KEY_ENVS.add(spec["api_key_env"])


# DSPy 3.4.1 exception class name -> wire code (the most specific class wins: checked by MRO).
_LM_CODES = {
    "LMRateLimitError": E.LM_RATE_LIMITED,
    "LMTimeoutError": E.LM_TIMEOUT,
    "LMAuthError": E.LM_AUTH,
    "LMBillingError": E.LM_AUTH,
    "ContextWindowExceededError": E.LM_CONTEXT_WINDOW,
    "LMTransportError": E.LM_TRANSPORT,
    "LMServerError": E.LM_BAD_RESPONSE,
    "LMInvalidRequestError": E.LM_BAD_RESPONSE,
    "LMUnexpectedError": E.LM_BAD_RESPONSE,
    "LMNotConfiguredError": E.LOCAL_UNAVAILABLE,
    "LMError": E.LM,
}


def _retry_after(exc: BaseException) -> float | None:
    seen: BaseException | None = exc
    for _ in range(4):  # DSPy's error wraps its HTTP client's, which carries the advice
        if seen is None:
            break
        value = getattr(seen, "retry_after", None)
        if isinstance(value, (int, float)):
            return float(value)
        seen = seen.__cause__ or seen.__context__
    return None


def tag(exc: BaseException, secrets: list[str]) -> WireError | None:
    """``exc`` as a WireError with its code and detail, scrubbed of ``secrets``; None when it
    has no code and no secret in its text or traceback (it then leaves as it is)."""
    if isinstance(exc, WireError):
        clean = WireError(exc.wire_code, scrub(str(exc), secrets),
                          **{k: scrub(v, secrets) if isinstance(v, str) else v for k, v in exc.wire_detail.items()})
        return clean
    name = type(exc).__name__
    message = scrub(f"{name}: {exc}", secrets)
    if name == "AdapterParseError":
        return WireError(E.PARSE, message, raw=scrub(str(getattr(exc, "lm_response", "") or ""), secrets),
                         adapter=str(getattr(exc, "adapter_name", "") or "dspy"))
    for cls in type(exc).__mro__:
        code = _LM_CODES.get(cls.__name__)
        if code is not None and cls.__module__.startswith("dspy"):
            status = getattr(exc, "status", None)
            return WireError(code, message, status=status if isinstance(status, int) else None,
                             retry_after=_retry_after(exc), model=str(getattr(exc, "model", "") or "") or None)
    text = "".join(traceback.format_exception(exc))
    if scrub(text, secrets) == text:
        return None
    return WireError("error", message, type=f"{type(exc).__module__}.{type(exc).__qualname__}")


def tagged(fn: F) -> F:
    """Run a handler; what it raises leaves as a tagged, scrubbed WireError."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            out = tag(exc, env_secrets(names=_KEY_ENVS))
            if out is None:
                raise
            raise out from None

    return run  # type: ignore[return-value]
