"""What comes back from a DSPy worker: predictions with native types, dspex errors."""

from __future__ import annotations

from typing import Any

from ..errors import ParseError, RemoteError
from ..settings import current


def _remote(exc: RemoteError) -> Exception:
    """DSPy's parse failures become dspex ParseErrors (same type as native); the rest stays."""
    if "AdapterParseError" in exc.remote_type:
        text = exc.remote_message
        raw = ""
        if "LM Response:" in text:
            raw = text.split("LM Response:", 1)[1].split("Expected to find", 1)[0].strip()
        err = ParseError(f"DSPy could not parse the LM reply: {text[:500]}", raw=raw, adapter="dspy")
        err.__cause__ = exc
        return err
    return exc


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


def _prediction(result: dict[str, Any], sig: Any) -> Any:
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
