"""Pipeline steps: what each step reads and writes, and how it runs once.

    Step          common options: name, reads/writes, timeout, retries, backoff,
                  fallback, cache; subclasses implement ``_execute``
    NativeStep    a callable, a native module (Predict, ChainOfThought, anything with
                  ``__call__(**inputs)``), a Template, or a signature string
    WorkerStep    a DSPy module run by the bridge's ``dspy.run`` handler, or any
                  handler of any pool
    Parallel      steps run concurrently on the same data (bounded, fail-fast or collect)
    Branch        ``then`` or ``otherwise`` steps, chosen by a condition
    FanOut        one step mapped over a list field, bounded

Retries, timeouts, fallback, cache, events and the trace are applied around
``_execute`` by the runner (``runner.RunState.run_step``), the same for every kind.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import json
import threading
import typing
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import PipelineError

if TYPE_CHECKING:
    from .runner import RunState
    from .trace import StepTrace

__all__ = [
    "Branch",
    "FanOut",
    "NativeStep",
    "Parallel",
    "Step",
    "StepContext",
    "WorkerStep",
    "as_step",
    "as_steps",
    "branch",
    "current_step",
    "fan_out",
    "native",
    "parallel",
    "worker",
]

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
        self.fallback: Step | None = as_step(fallback) if fallback is not None else None
        self.cache_size = 256 if cache is True else int(cache or 0)
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_lock = threading.Lock()

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
        clone._cache = OrderedDict()
        clone._cache_lock = threading.Lock()
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
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return None if hit is None else dict(hit)

    def cache_put(self, key: str, outputs: dict[str, Any]) -> None:
        with self._cache_lock:
            self._cache[key] = dict(outputs)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def cache_clear(self) -> None:
        with self._cache_lock:
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


# --- native ------------------------------------------------------------------------
def _is_template(obj: Any) -> bool:
    return type(obj).__name__ == "Template" and type(obj).__module__.startswith("dspex.")


def _template_fields(tpl: Any) -> tuple[str, ...]:
    for attr in ("placeholders", "fields", "variables", "names"):
        value = getattr(tpl, attr, None)
        if callable(value):
            value = value()
        if value:
            return tuple(value)
    return ()


def _callable_io(fn: Any) -> tuple[list[str], list[str], dict[str, Any], Any, bool]:
    """(required params, optional params, param types, return type, takes **kwargs)."""
    target = fn
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)) and hasattr(fn, "forward"):
        target = fn.forward
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return [], [], {}, None, True
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    required: list[str] = []
    optional: list[str] = []
    var_kw = False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            (required if p.default is p.empty else optional).append(p.name)
        elif p.kind is p.VAR_KEYWORD:
            var_kw = True
    types = {k: v for k, v in hints.items() if k != "return"}
    return required, optional, types, hints.get("return"), var_kw


def _typed_dict_fields(tp: Any) -> dict[str, Any] | None:
    if isinstance(tp, type) and typing.is_typeddict(tp):
        try:
            return dict(typing.get_type_hints(tp))
        except Exception:
            return dict(getattr(tp, "__annotations__", {}))
    return None


def _callable_name(fn: Any) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "step" if name == "<lambda>" else str(name)


class NativeStep(Step):
    """A step run in the caller's process. See ``native()``."""

    kind = "native"

    def __init__(
        self,
        target: Any,
        *,
        name: str | None = None,
        reads: str | Sequence[str] | Mapping[str, str] | None = None,
        writes: str | Sequence[str] | None = None,
        inline: bool = False,
        lm: Any = None,
        module: str = "Predict",
        instructions: str | None = None,
        demos: list[Any] | None = None,
        **options: Any,
    ):
        self.target = target
        self.inline = inline
        self.lm = lm
        self.module_name = module
        self.instructions = instructions
        self.demos = demos
        self.mode: str
        self.signature: Any = None
        (r, arg_map), w = _reads_spec(reads), _field_names(writes)
        read_types: dict[str, Any] = {}
        write_types: dict[str, Any] = {}
        optional: list[str] = []
        auto_name: str
        if isinstance(target, str) or _looks_like_signature(target):
            # "question -> answer": a predictor built lazily from the signature
            self.mode = "signature"
            self.signature = _parse_signature(target)
            read_types, write_types = _sig_io(self.signature)
            if module == "ChainOfThought" and "reasoning" not in write_types:
                write_types = {"reasoning": None, **write_types}
            auto_name = "_".join(n for n in write_types if n != "reasoning") or "predict"
            self._predictor: Any = None
            self._predictor_lock = threading.Lock()
        elif _is_template(target):
            self.mode = "template"
            fields = _template_fields(target)
            read_types = dict.fromkeys(fields)
            auto_name = "template"
        elif hasattr(target, "signature") and hasattr(target.signature, "input_fields"):
            self.mode = "module"
            self.signature = target.signature
            read_types, write_types = _sig_io(self.signature)
            auto_name = "_".join(n for n in write_types if n != "reasoning") or type(target).__name__.lower()
        elif callable(target):
            self.mode = "callable"
            required, opt, types, ret, _ = _callable_io(target)
            read_types = {k: types.get(k) for k in required}
            optional = opt
            td = _typed_dict_fields(ret)
            auto_name = _callable_name(target)
            if td is not None:
                write_types = td
            elif w is None:
                write_types = {name or auto_name: ret}
            elif len(w) == 1:
                write_types = {w[0]: ret}
        else:
            raise PipelineError(
                f"dspex.native() needs a callable, a native module, a Template or a signature string, "
                f"not {type(target).__name__}"
            )
        step_name = name or auto_name
        if w is None and self.mode == "template":
            write_types = {step_name: str}
        if r is not None:
            params = {f: arg_map.get(f, f) for f in r}
            read_types = {k: read_types.get(params[k]) for k in r}
            optional = [o for o in optional if o not in params.values()]
        if w is not None:
            write_types = {k: write_types.get(k) for k in w}
        self._async_call = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            type(target).__call__ if not inspect.isroutine(target) else None
        )
        super().__init__(
            name=step_name,
            reads=list(read_types),
            writes=list(write_types),
            read_types=read_types,
            write_types=write_types,
            optional_reads=optional,
            named=name is not None,
            **options,
        )
        self.arg_map = arg_map

    def label(self) -> str:
        if self.mode == "signature":
            return f"{self.name}: {_sig_string(self.signature)}"
        return self.name

    def _get_predictor(self) -> Any:
        if self.mode != "signature":
            return self.target
        with self._predictor_lock:
            if self._predictor is None:
                from ..native import predict as predict_mod

                cls = getattr(predict_mod, self.module_name, None)
                if cls is None:
                    raise PipelineError(
                        f"step {self.name!r}: unknown native module {self.module_name!r}; "
                        "use 'Predict' or 'ChainOfThought'"
                    )
                kwargs: dict[str, Any] = {}
                if self.instructions is not None:
                    kwargs["instructions"] = self.instructions
                if self.demos is not None:
                    kwargs["demos"] = self.demos
                self._predictor = cls(self.signature, **kwargs)
            return self._predictor

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        inputs = self.inputs_of(data)
        lm = self.lm if self.lm is not None else rt.lm
        if self.mode == "template":
            return self._outputs(self.target.render(**inputs))
        target = self._get_predictor()
        acall = getattr(target, "acall", None) if self.mode in ("signature", "module") else None
        if acall is not None and inspect.iscoroutinefunction(acall):
            result = await rt.in_context(acall(**inputs), lm, st)
        elif self._async_call:
            result = await rt.in_context(target(**inputs), lm, st)
        elif self.inline:
            result = rt.call_inline(target, inputs, lm, st)
        else:
            result = await rt.call_in_thread(target, inputs, lm, st)
        return self._outputs(result)


def _looks_like_signature(obj: Any) -> bool:
    if isinstance(obj, type):
        return hasattr(obj, "input_fields") or any(
            b.__name__ == "Signature" and b.__module__.startswith("dspex.") for b in obj.__mro__
        )
    return (
        hasattr(obj, "input_fields")
        and hasattr(obj, "output_fields")
        and not callable(obj)
    )


def native(
    target: Any,
    *,
    name: str | None = None,
    reads: str | Sequence[str] | Mapping[str, str] | None = None,
    writes: str | Sequence[str] | None = None,
    inline: bool = False,
    lm: Any = None,
    module: str = "Predict",
    instructions: str | None = None,
    demos: list[Any] | None = None,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = 0.1,
    fallback: Any = None,
    cache: bool | int = False,
) -> NativeStep:
    """A step run in this process.

    ``target`` is one of:
      - a callable: called with the fields it reads as keyword arguments (by default
        its parameter names; parameters with defaults are passed when present). Its
        return value is stored under ``writes`` (default: the step's name); a mapping
        return value is spread over several ``writes``. Sync callables run in a thread
        (``inline=True`` runs cheap ones on the event loop); ``async def`` are awaited.
        ``reads={"param": "field"}`` passes a field under another argument name.
      - a native module (``dspex.Predict(sig)``, ``ChainOfThought``, anything with a
        ``signature`` and ``__call__(**inputs)``): reads/writes from its signature.
      - a signature string (``"question -> search_queries: list[str]"``): a ``Predict``
        (or ``module="ChainOfThought"``) built on first use.
      - a ``dspex.Template``: renders the fields it names into ``writes``.
    """
    return NativeStep(
        target,
        name=name,
        reads=reads,
        writes=writes,
        inline=inline,
        lm=lm,
        module=module,
        instructions=instructions,
        demos=demos,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        fallback=fallback,
        cache=cache,
    )


# --- worker --------------------------------------------------------------------------

class WorkerStep(Step):
    """A step run in a worker process of a pool. See ``worker()``."""

    kind = "worker"

    def __init__(
        self,
        module: str | None = None,
        *,
        handler: str | None = None,
        pool: Any = "dspy",
        signature: Any = None,
        name: str | None = None,
        reads: str | Sequence[str] | Mapping[str, str] | None = None,
        writes: str | Sequence[str] | None = None,
        params: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        state: Any = None,
        adapter: str | None = None,
        lm: Any = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.1,
        fallback: Any = None,
        cache: bool | int = False,
        **more_options: Any,
    ):
        if (module is None) == (handler is None):
            raise PipelineError(
                "dspex.worker() needs either a DSPy module name (dspex.worker('dspy.ChainOfThought', "
                "signature=...)) or handler= (dspex.worker(handler='echo', pool=...)), not both"
            )
        self.module = module
        self.handler = handler or "dspy.run"
        self.pool = pool
        self.params = dict(params or {})
        self.options = {**dict(options or {}), **more_options}
        self.state = state
        self.adapter = adapter
        self.lm = lm
        self.signature: Any = None
        (r, arg_map), w = _reads_spec(reads), _field_names(writes)
        read_types: dict[str, Any] = {}
        write_types: dict[str, Any] = {}
        if module is not None:
            if signature is None:
                raise PipelineError(
                    f"dspex.worker({module!r}) needs signature=, e.g. signature='question -> answer'"
                )
            self.signature = _parse_signature(signature)
            self.signature_text = signature if isinstance(signature, str) else _sig_string(self.signature)
            read_types, write_types = _sig_io(self.signature)
            if self.module_short() in ("ChainOfThought",) and "reasoning" not in write_types:
                write_types = {"reasoning": None, **write_types}
            auto = "_".join(n for n in write_types if n != "reasoning") or self.module_short().lower()
        else:
            if more_options:
                raise PipelineError(
                    f"dspex.worker(handler={handler!r}) got unknown options {sorted(more_options)}; "
                    "pass constant handler arguments as params={...}"
                )
            auto = str(handler).replace(".", "_")
            if w is None:
                w = (name or auto,)
            if r is None:
                r = ()
        if r is not None:
            read_types = {k: read_types.get(k) for k in r}
        if w is not None:
            write_types = {k: write_types.get(k) for k in w}
        super().__init__(
            name=name or auto,
            reads=list(read_types),
            writes=list(write_types),
            read_types=read_types,
            write_types=write_types,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            fallback=fallback,
            cache=cache,
            named=name is not None,
        )
        self.arg_map = arg_map

    def module_short(self) -> str:
        return (self.module or "").removeprefix("dspy.")

    def pool_name(self) -> str:
        if isinstance(self.pool, str):
            return self.pool
        return str(getattr(self.pool, "name", "pool"))

    def where(self) -> str:
        return self.pool_name()

    def label(self) -> str:
        if self.module is not None:
            return f"{self.name}: {self.module}({self.signature_text})"
        return f"{self.name}: {self.handler}"

    def _load_state(self) -> Any:
        if isinstance(self.state, str | Path):
            path = Path(self.state)
            if not path.is_file():
                return None  # not optimized yet: run the module as built
            return json.loads(path.read_text())
        return self.state

    def call_kwargs(self, data: Mapping[str, Any], rt: RunState) -> dict[str, Any]:
        inputs = self.inputs_of(data)
        if self.module is None:
            return {**self.params, **inputs}
        lm = self.lm if self.lm is not None else rt.lm
        kwargs: dict[str, Any] = {
            "module": self.module_short(),
            "signature": self.signature_text,
            "inputs": inputs,
            "lm": rt.lm_spec(lm),
            "options": dict(self.options),
        }
        if self.adapter is not None:
            kwargs["adapter"] = self.adapter
        state = self._load_state()
        if state is not None:
            kwargs["state"] = state
        return {**self.params, **kwargs}

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        kwargs = self.call_kwargs(data, rt)
        value = await rt.call_worker(self, kwargs, st)
        if self.module is not None and isinstance(value, Mapping) and "outputs" in value:
            usage = value.get("usage")
            if isinstance(usage, Mapping):
                rt.record_worker_usage(st, usage)
            if value.get("pid") is not None and st.pid is None:
                st.pid = int(value["pid"])
            value = value["outputs"]
        return self._outputs(value)


def worker(
    module: str | None = None,
    *,
    handler: str | None = None,
    pool: Any = "dspy",
    signature: Any = None,
    name: str | None = None,
    reads: str | Sequence[str] | Mapping[str, str] | None = None,
    writes: str | Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    state: Any = None,
    adapter: str | None = None,
    lm: Any = None,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = 0.1,
    fallback: Any = None,
    cache: bool | int = False,
    **module_options: Any,
) -> WorkerStep:
    """A step run in a worker process, with the run's session.

    - ``dspex.worker("dspy.ChainOfThought", signature="a -> b", pool="dspy", **options)``:
      the bridge's ``dspy.run`` handler builds that DSPy module (once per session and
      worker) and calls it; ``state=`` a program state dict or a JSON file path (used
      when the file exists) loads optimized instructions/demos; ``lm=`` or the run's LM
      travels as ``LM.to_spec()``.
    - ``dspex.worker(handler="echo", pool="mypool", reads=["x"], writes=["y"])``: any
      handler; the fields read are passed as keyword arguments (plus ``params``), the
      return value is stored under ``writes`` (default: the step's name).
      ``reads={"query": "question"}`` passes the field ``question`` as ``query=``.

    ``pool`` is a pool name (from the config, or ``Pipeline(pools={...})``) or a Pool.
    """
    return WorkerStep(
        module,
        handler=handler,
        pool=pool,
        signature=signature,
        name=name,
        reads=reads,
        writes=writes,
        params=params,
        options=options,
        state=state,
        adapter=adapter,
        lm=lm,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        fallback=fallback,
        cache=cache,
        **module_options,
    )


# --- groups ------------------------------------------------------------------------------
class Parallel(Step):
    """Steps run concurrently on the same data. See ``parallel()``."""

    kind = "parallel"

    def __init__(
        self,
        steps: Sequence[Any],
        *,
        name: str | None = None,
        concurrency: int | None = None,
        on_error: str = "fail_fast",
        into: str | None = None,
        **options: Any,
    ):
        if on_error not in _ON_ERROR:
            raise PipelineError(f"parallel(on_error={on_error!r}) must be one of {list(_ON_ERROR)}")
        self.steps = as_steps(steps)
        self.concurrency = concurrency
        self.on_error = on_error
        self.into = into
        reads: dict[str, Any] = {}
        writes: dict[str, Any] = {}
        for s in self.steps:
            for k in s.reads:
                reads.setdefault(k, s.read_types.get(k))
            for k in s.writes:
                writes.setdefault(k, s.write_types.get(k))
        if into is not None:
            writes = {into: dict}
        super().__init__(
            name=name or "parallel",
            reads=list(reads),
            writes=list(writes),
            read_types=reads,
            write_types=writes,
            named=name is not None,
            **options,
        )

    def children(self) -> list[Step]:
        return list(self.steps)

    def where(self) -> str:
        return "group"

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        results = await rt.gather(
            [(s, data) for s in self.steps], st.path, self.concurrency, fail_fast=self.on_error == "fail_fast"
        )
        by_name = {s.name: out for s, out in zip(self.steps, results, strict=True)}
        if self.into is not None:
            return {self.into: by_name}
        merged: dict[str, Any] = {}
        for s in self.steps:  # declaration order, never finishing order
            merged.update(by_name[s.name])
        return merged


def parallel(
    steps: Sequence[Any],
    *,
    name: str | None = None,
    concurrency: int | None = None,
    on_error: str = "fail_fast",
    into: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = 0.1,
    fallback: Any = None,
    cache: bool | int = False,
) -> Parallel:
    """Run ``steps`` concurrently (at most ``concurrency`` at once) on the same data.

    Their outputs are merged by field in declaration order (two steps writing the same
    field is a wiring error), or, with ``into="field"``, stored as
    ``{step name: {its outputs}}`` under that field. ``on_error="fail_fast"`` (default):
    the first failure cancels the running siblings (their worker calls too) and is
    raised; ``"collect"``: every step runs to its end and all failures are raised
    together (``StepFailed`` whose cause is an ``ExceptionGroup``).
    """
    return Parallel(
        steps,
        name=name,
        concurrency=concurrency,
        on_error=on_error,
        into=into,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        fallback=fallback,
        cache=cache,
    )


class Branch(Step):
    """``then`` or ``otherwise`` steps by a condition. See ``branch()``."""

    kind = "branch"

    def __init__(
        self,
        condition: str | Callable[[Mapping[str, Any]], Any],
        then: Any,
        otherwise: Any = None,
        *,
        name: str | None = None,
        reads: str | Sequence[str] | None = None,
        **options: Any,
    ):
        self.condition = condition
        self.then = as_steps(then if isinstance(then, list | tuple) else [then])
        self.otherwise = (
            []
            if otherwise is None
            else as_steps(otherwise if isinstance(otherwise, list | tuple) else [otherwise])
        )
        cond_reads = list(_field_names(reads) or ())
        if isinstance(condition, str):
            cond_reads = [condition, *[c for c in cond_reads if c != condition]]
        elif not callable(condition):
            raise PipelineError("branch(condition=...) must be a field name or a callable on the data")
        self.condition_reads = tuple(cond_reads)
        # reads = condition fields + what each arm needs from outside; writes = what
        # both arms write (only those are certain afterwards)
        then_reads, then_writes = _seq_io(self.then)
        else_reads, else_writes = _seq_io(self.otherwise)
        reads_all: dict[str, Any] = dict.fromkeys(cond_reads)
        for k, v in [*then_reads.items(), *else_reads.items()]:
            reads_all.setdefault(k, v)
        writes_all = {k: v for k, v in then_writes.items() if k in else_writes}
        self.maybe_writes = tuple(k for k in {**then_writes, **else_writes} if k not in writes_all)
        super().__init__(
            name=name or "branch",
            reads=list(reads_all),
            writes=list(writes_all),
            read_types=reads_all,
            write_types=writes_all,
            named=name is not None,
            **options,
        )

    def children(self) -> list[Step]:
        return [*self.then, *self.otherwise]

    def where(self) -> str:
        return "group"

    def condition_label(self) -> str:
        if isinstance(self.condition, str):
            return self.condition
        return _callable_name(self.condition)

    def test(self, data: Mapping[str, Any]) -> bool:
        if isinstance(self.condition, str):
            return bool(data.get(self.condition))
        return bool(self.condition(dict(data)))

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        arm = self.then if self.test(data) else self.otherwise
        st.where = "then" if arm is self.then else "otherwise"
        return await rt.run_sequence(arm, data, st.path)


def branch(
    condition: str | Callable[[Mapping[str, Any]], Any],
    then: Any,
    otherwise: Any = None,
    *,
    name: str | None = None,
    reads: str | Sequence[str] | None = None,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = 0.1,
    fallback: Any = None,
) -> Branch:
    """Run ``then`` (a step or a list of steps) when ``condition`` holds, else ``otherwise``.

    ``condition`` is a field name (its truthiness) or a callable given a copy of the data
    (declare the fields it looks at with ``reads=`` so the wiring check knows). Only the
    fields both arms write count as written afterwards.
    """
    return Branch(
        condition,
        then,
        otherwise,
        name=name,
        reads=reads,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        fallback=fallback,
    )


class FanOut(Step):
    """One step mapped over a list field. See ``fan_out()``."""

    kind = "fan_out"

    def __init__(
        self,
        step: Any,
        *,
        over: str,
        into: str,
        item: str | None = None,
        concurrency: int = 4,
        on_error: str = "fail_fast",
        name: str | None = None,
        **options: Any,
    ):
        if on_error not in _ON_ERROR:
            raise PipelineError(f"fan_out(on_error={on_error!r}) must be one of {list(_ON_ERROR)}")
        self.step = as_step(step)
        self.over = over
        self.into = into
        self.concurrency = max(1, int(concurrency))
        self.on_error = on_error
        if item is None:
            free = list(self.step.reads)
            item = free[0] if len(free) == 1 else None
        self.item = item
        inner_reads = {k: v for k, v in self.step.read_types.items() if k != item}
        item_type = self.step.read_types.get(item) if item else None
        reads = {over: (list[item_type] if item_type is not None else None), **inner_reads}  # type: ignore[valid-type]
        if len(self.step.writes) == 1:
            out_t = self.step.write_types.get(self.step.writes[0])
            into_t: Any = list[out_t] if out_t is not None else list  # type: ignore[valid-type]
        else:
            into_t = list
        super().__init__(
            name=name or f"fan_out_{into}",
            reads=list(reads),
            writes=[into],
            read_types=reads,
            write_types={into: into_t},
            named=name is not None,
            **options,
        )

    def children(self) -> list[Step]:
        return [self.step]

    def where(self) -> str:
        return "group"

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        items = data[self.over]
        if not isinstance(items, list | tuple):
            raise TypeError(f"fan_out over {self.over!r} needs a list, got {type(items).__name__}")
        assert self.item is not None  # checked by validation
        jobs = []
        for i, value in enumerate(items):
            jobs.append((self.step.with_name(f"{self.step.name}[{i}]"), {**data, self.item: value}))
        results = await rt.gather(jobs, st.path, self.concurrency, fail_fast=self.on_error == "fail_fast")
        if len(self.step.writes) == 1:
            key = self.step.writes[0]
            return {self.into: [r[key] for r in results]}
        return {self.into: list(results)}


def fan_out(
    step: Any,
    *,
    over: str,
    into: str,
    item: str | None = None,
    concurrency: int = 4,
    on_error: str = "fail_fast",
    name: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = 0.1,
    fallback: Any = None,
    cache: bool | int = False,
) -> FanOut:
    """Run ``step`` once per element of the list field ``over``, at most ``concurrency``
    at a time; results go to ``into`` as a list in input order (the single field the step
    writes, or a dict of its writes). Each element is bound to the field ``item``
    (default: the step's only read)."""
    return FanOut(
        step,
        over=over,
        into=into,
        item=item,
        concurrency=concurrency,
        on_error=on_error,
        name=name,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        fallback=fallback,
        cache=cache,
    )


# --- helpers ----------------------------------------------------------------------------------
def as_step(obj: Any) -> Step:
    """A Step from a step, a callable, a native module, a Template or a signature string."""
    if isinstance(obj, Step):
        return obj
    if isinstance(obj, list | tuple):
        raise PipelineError(
            "a list is not a step: wrap concurrent steps in dspex.parallel([...]); "
            "a branch arm may be a list"
        )
    return native(obj)


def as_steps(objs: Sequence[Any]) -> list[Step]:
    return [as_step(o) for o in objs]


def _seq_io(steps: Sequence[Step]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields read from outside, fields written) of a sequence of steps."""
    reads: dict[str, Any] = {}
    writes: dict[str, Any] = {}
    for s in steps:
        for k in s.reads:
            if k not in writes:
                reads.setdefault(k, s.read_types.get(k))
        for k in s.writes:
            writes[k] = s.write_types.get(k)
    return reads, writes


def is_async_callable(fn: Any) -> bool:
    return asyncio.iscoroutinefunction(fn)
