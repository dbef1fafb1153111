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


def tracer() -> Any:
    """The dspex tracer, or None when opentelemetry is not installed."""
    global _tracer
    if _tracer is _UNSET:
        try:
            from opentelemetry import trace as ot_trace
        except ImportError:
            _tracer = None
        else:
            _tracer = ot_trace.get_tracer("dspex.pipeline")
    return _tracer


def _reset() -> None:
    """Forget the cached tracer (tests that install a TracerProvider)."""
    global _tracer
    _tracer = _UNSET


@contextmanager
def span(name: str, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
    """A current span (or None without opentelemetry); exceptions are recorded on it."""
    t = tracer()
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
