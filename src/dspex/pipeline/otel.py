"""OpenTelemetry spans for runs and steps, when ``opentelemetry-api`` is installed.

One span per run (``dspex.pipeline <name>``) and one per step execution
(``dspex.step <path>``), nested as the steps are. Attributes carry where the step
ran, the worker pid, retries, cache hits and token usage. Without the package this
module costs one failed import, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["span", "tracer"]

_UNSET: Any = object()
_tracer: Any = _UNSET


_ot_trace: Any = _UNSET


def tracer() -> Any:
    """The dspex tracer, or None when opentelemetry is not installed or no
    TracerProvider is set (spans would go nowhere; skipping them saves ~25 us a step)."""
    global _tracer, _ot_trace
    if _ot_trace is _UNSET:
        try:
            from opentelemetry import trace as ot_trace

            _ot_trace = ot_trace
        except ImportError:
            _ot_trace = None
    if _ot_trace is None:
        return None
    provider = _ot_trace.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return None
    if _tracer is _UNSET or getattr(_tracer, "_dspex_provider", None) is not provider:
        _tracer = provider.get_tracer("dspex.pipeline")
        try:
            _tracer._dspex_provider = provider
        except AttributeError:
            pass
    return _tracer


def _reset() -> None:
    """Forget the cached tracer (tests that install a TracerProvider)."""
    global _tracer
    _tracer = _UNSET


def enabled() -> bool:
    return tracer() is not None


@contextmanager
def span(name: str, attributes: dict[str, Any] | None = None, *, on: bool = True) -> Iterator[Any]:
    """A current span (or None without opentelemetry); exceptions are recorded on it."""
    t = tracer() if on else None
    if t is None:
        yield None
        return
    with t.start_as_current_span(name, attributes=_clean(attributes or {})) as sp:
        yield sp


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if isinstance(v, str | bool | int | float)}


def set_attributes(sp: Any, attrs: dict[str, Any]) -> None:
    if sp is not None:
        sp.set_attributes(_clean(attrs))
