"""The step base: the options every step takes, its reads/writes, cache, and the
``StepContext`` a running native step sees (``current_step()``).

Retries, timeouts, fallback, cache, events and the trace are applied around
``Step._execute`` by the runner (``runner.RunState.run_step``), the same for every kind.
"""

from __future__ import annotations

import contextvars
import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from ..native._memo import Memo

if TYPE_CHECKING:
    from .runner import RunState
    from .trace import StepTrace

__all__ = ["Step", "StepContext", "StepOptions", "current_step"]


class StepOptions(TypedDict, total=False):
    """The options every step kind takes (see :class:`Step`); the builders pass them on."""

    timeout: float | None
    retries: int
    backoff: float
    fallback: Any
    cache: bool | int

_ON_ERROR = ("fail_fast", "collect")


class StepContext:
    """What a running native step can see: ``current_step()`` inside the step.

    ``cancelled`` turns True when the run no longer wants this step's result (a
    sibling failed, a timeout passed). Sync steps run in a thread and cannot be
    interrupted from outside: long ones should poll ``cancelled`` and return.
    """

    def __init__(self, name: str, path: str, session: str, emit_progress: Callable[[dict[str, Any]], None]):
        self.name = name
        self.path = path
        self.session = session
        self._event: threading.Event | None = None  # made on first use: most steps never look
        self._cancelled = False
        self._emit = emit_progress

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early if cancelled; True if cancelled."""
        if self._event is None:
            self._event = threading.Event()
            if self._cancelled:
                self._event.set()
        return self._event.wait(timeout)

    def progress(self, **event: Any) -> None:
        """Report progress; it reaches ``stream()`` as a ``StepProgress`` event."""
        self._emit(dict(event))

    def _cancel(self) -> None:
        self._cancelled = True
        event = self._event
        if event is not None:
            event.set()


_current_step: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "dspex_pipeline_step", default=None
)


def current_step() -> StepContext:
    """The ``StepContext`` of the native step running in this thread/task."""
    ctx = _current_step.get()
    if ctx is None:
        raise RuntimeError("current_step() is only available inside a running pipeline step")
    return ctx


def _reads_spec(
    value: str | Sequence[str] | Mapping[str, str] | None,
) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """(fields read, {field: parameter name}) from ``reads=``; a mapping is
    ``{parameter: field}``: pass field ``field`` as the argument ``parameter``."""
    if isinstance(value, Mapping):
        return tuple(value.values()), {field: param for param, field in value.items() if param != field}
    return _field_names(value), {}


def _field_names(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


class Step:
    """Base of every step. Options shared by all kinds:

    ``timeout`` seconds per attempt (``StepTimeout``, retryable); ``retries`` extra
    attempts for retryable errors only (``exc.retryable``), waiting ``backoff * 2**n``
    seconds; ``fallback`` a step run on the same data when the step still fails; ``cache``
    True (256 entries) or a size: outputs cached in memory keyed by the inputs read.
    """

    kind: ClassVar[str] = "step"

    def __init__(
        self,
        *,
        name: str,
        reads: Sequence[str] = (),
        writes: Sequence[str] = (),
        read_types: Mapping[str, Any] | None = None,
        write_types: Mapping[str, Any] | None = None,
        optional_reads: Sequence[str] = (),
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.1,
        fallback: Any = None,
        cache: bool | int = False,
        named: bool = True,
    ):
        self.name = name
        self.named = named  # False: the name was made up, may be suffixed to be unique
        self.reads = tuple(reads)
        self.writes = tuple(writes)
        self.optional_reads = tuple(optional_reads)
        self.arg_map: dict[str, str] = {}  # field -> argument name, from reads={param: field}
        self.read_types: dict[str, Any] = dict(read_types or {})
        self.write_types: dict[str, Any] = dict(write_types or {})
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)
        if fallback is not None:
            from .groups import as_step  # groups builds on this module

            self.fallback: Step | None = as_step(fallback)
        else:
            self.fallback = None
        self.cache_size = 256 if cache is True else int(cache or 0)
        self._cache: Memo[dict[str, Any]] = Memo(self.cache_size)

    # --- structure -------------------------------------------------------------
    def children(self) -> list[Step]:
        return []

    def where(self) -> str:
        return "native"

    def label(self) -> str:
        return self.name

    def with_name(self, name: str) -> Step:
        clone = copy.copy(self)
        clone.name = name
        clone._cache = Memo(self.cache_size)
        return clone

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} reads={list(self.reads)} writes={list(self.writes)}>"

    # --- running -----------------------------------------------------------------
    def inputs_of(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if self.arg_map:
            out = {self.arg_map.get(k, k): data[k] for k in self.reads}
        else:
            out = {k: data[k] for k in self.reads}
        for k in self.optional_reads:
            if k in data:
                out[k] = data[k]
        return out

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        raise NotImplementedError

    def _outputs(self, result: Any) -> dict[str, Any]:
        """Map a step's return value onto its declared ``writes``."""
        if (isinstance(result, Mapping) or _is_prediction(result)) and all(
            _has(result, w) for w in self.writes
        ):
            return {w: _get(result, w) for w in self.writes}
        if len(self.writes) == 1:
            return {self.writes[0]: result}
        if not self.writes:
            return {}
        missing = [w for w in self.writes if not _has(result, w)]
        raise ValueError(
            f"step {self.name!r} returned {type(result).__name__} without the field(s) {missing}; "
            f"return a mapping with {list(self.writes)} or declare writes= to match"
        )

    # --- cache -------------------------------------------------------------------
    def cache_key(self, inputs: Mapping[str, Any]) -> str | None:
        try:
            return json.dumps(inputs, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            return None

    def cache_get(self, key: str) -> dict[str, Any] | None:
        hit = self._cache.peek(key)
        return None if hit is None else dict(hit)

    def cache_put(self, key: str, outputs: dict[str, Any]) -> None:
        self._cache.put(key, dict(outputs))

    def cache_clear(self) -> None:
        self._cache.clear()


def _is_prediction(obj: Any) -> bool:
    return hasattr(obj, "keys") and hasattr(obj, "__getitem__")


def _has(obj: Any, key: str) -> bool:
    try:
        return key in obj
    except TypeError:
        return hasattr(obj, key)


def _get(obj: Any, key: str) -> Any:
    try:
        return obj[key]
    except (KeyError, TypeError):
        return getattr(obj, key)


# --- signatures ------------------------------------------------------------------
def _parse_signature(spec: Any) -> Any:
    from ..native.signature import signature as parse

    return parse(spec)


def _field_type(field: Any) -> Any:
    """The annotation of a signature field, or None (unchecked) when it is ``str``.

    An untyped field is ``str`` and a str input field accepts any value (DSPy formats
    lists and dicts for it), so ``str`` fields are not type-checked; explicit
    non-str types (``list[str]``, ``int``) are.
    """
    annotation = getattr(field, "annotation", None)
    return None if annotation is str else annotation


def _sig_io(sig: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    ins = {n: _field_type(f) for n, f in sig.input_fields.items()}
    outs = {n: _field_type(f) for n, f in sig.output_fields.items()}
    return ins, outs


def _sig_string(sig: Any) -> str:
    to_string = getattr(sig, "to_string", None)
    if callable(to_string):
        try:
            return str(to_string(types=True))
        except TypeError:
            return str(to_string())
    return str(sig)
