"""What comes back from a DSPy worker: predictions with native types, and dspex errors.

:func:`from_remote` is the one place a worker's error becomes a dspex error type: by the
structured code the bridge put in the error frame (``RemoteError.code``, codes in
``dspex.wire.E``), never by reading its message. Every message and traceback is scrubbed
of this process's secrets too (the bridge scrubs the worker's; this is the second line).
"""

from __future__ import annotations

from typing import Any

from .. import errors
from ..settings import current
from ..wire import E, scrub

__all__ = ["from_remote", "prediction"]

_LM_ERRORS: dict[str, type[errors.LMError]] = {
    E.LM_RATE_LIMITED: errors.LMRateLimited,
    E.LM_TIMEOUT: errors.LMTimeout,
    E.LM_AUTH: errors.LMAuthError,
    E.LM_CONTEXT_WINDOW: errors.ContextWindowExceeded,
    E.LM_BAD_RESPONSE: errors.LMBadResponse,
    E.LM_TRANSPORT: errors.LMTransportError,
    E.LM: errors.LMError,
}


def _scrubbed(exc: errors.RemoteError) -> errors.RemoteError:
    message, tb = scrub(exc.remote_message), scrub(exc.remote_traceback)
    if message == exc.remote_message and tb == exc.remote_traceback:
        return exc
    clean = errors.RemoteError(exc.remote_type, message, tb, detail=exc.detail)
    clean.__traceback__ = exc.__traceback__
    return clean


def from_remote(exc: errors.RemoteError) -> Exception:
    """The dspex error a worker's error frame stands for (same types as the native path).

    The result's ``__cause__`` is the (scrubbed) RemoteError, so its remote traceback
    stays reachable; raise it ``from`` nothing else.
    """
    remote = _scrubbed(exc)
    detail = dict(remote.detail or {})
    code = remote.code
    message = remote.remote_message
    out: Exception
    if code == E.PARSE:
        out = errors.ParseError(f"DSPy could not parse the LM reply: {message[:500]}",
                                raw=str(detail.get("raw") or ""), adapter=str(detail.get("adapter") or "dspy"))
    elif code in _LM_ERRORS:
        out = _LM_ERRORS[code](message, status=detail.get("status"), retry_after=detail.get("retry_after"),
                               model=detail.get("model"))
    elif code in (E.LOCAL_UNAVAILABLE, E.UNSUPPORTED):
        out = errors.ImplementationUnavailable(message)
    elif code == E.BAD_OPTION:
        out = errors.ConfigError(message)
    else:
        return remote
    out.__cause__ = remote
    return out


def _coerce(sig: Any, outputs: dict[str, Any]) -> dict[str, Any]:
    """Rebuild rich output values (pydantic models) the worker sent as plain data."""
    if sig is None:
        return outputs
    for name, f in sig.output_fields.items():
        ann = f.annotation
        value = outputs.get(name)
        if isinstance(value, dict) and isinstance(ann, type) and hasattr(ann, "model_validate"):
            outputs[name] = ann.model_validate(value)
    return outputs


def prediction(result: dict[str, Any], sig: Any) -> Any:
    """A worker's ``{"outputs", "usage", "trajectory"?}`` as a Prediction; usage is recorded
    into the open ``dspex.context()``s."""
    from ..native.values import Prediction

    pred = Prediction(**_coerce(sig, dict(result.get("outputs") or {})))
    if "trajectory" in result:
        pred["trajectory"] = result["trajectory"]
    usage = result.get("usage")
    if usage:
        pred.set_lm_usage(usage)
        for model, u in usage.items():
            current().record_usage(model, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    return pred
