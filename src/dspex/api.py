"""The implementation-agnostic API: one set of operations, routed native or DSPy per call.

    sig = dspex.signature("question -> answer: int")
    dspex.predict(sig, {"question": "6*7?"})                      # one Prediction
    cot = dspex.chain_of_thought(sig, impl="dspy")                # a module: call with inputs
    cot(question="6*7?").answer                                   # 42 (an int, either way)
    agent = dspex.react("question -> answer", tools=[search, add])
    optimized = dspex.optimize(dspex.Predict(sig), trainset, optimizer="miprov2", metric=exact)
    dspex.retrieve("moons of mars", k=3, source="bm25:solar_system")
    print(dspex.explain("predict", sig, adapter="xml"))           # where, and why

Where a call runs is decided by :mod:`dspex.router` (``impl="auto"|"native"|"dspy"``;
defaults from ``dspex.context(impl=...)`` and config ``[router]`` / ``[router.ops]``).
The DSPy side runs in worker pools (``dspy`` for modules, ``optimizer`` for
optimizers) through the bridge handlers; pass ``pool=`` (a Pool or a
PoolManager) or ``dspex.context(pools={"dspy": pool, ...})`` to choose the pools.
Results come back as dspex ``Prediction`` objects with the same types as native.

Retrieval sources (``source=``):

* ``"bm25:<name or path>"`` (default ``bm25:solar_system``, the shipped corpus):
  native BM25 in process; also a ``BM25`` object, any object with
  ``.search(query, k)``, a callable ``(query, k)``, or a list of passages;
* ``"colbert:<url>"``: a ColBERTv2-protocol server (e.g.
  ``dspex.native.colbert_server.ColBERTv2Server``), queried natively over HTTP, or
  with ``dspy.ColBERTv2`` in a worker when ``impl="dspy"``;
* ``"dense:<name or path>"``: ``dspy.retrievers.Embeddings`` in a worker with a
  local embedder (``embedder="hash"`` default, ``"minilm"`` when installed).
"""

from __future__ import annotations

import contextvars
import inspect
import json
import threading
import time
import typing
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import router
from .errors import ImplementationUnavailable, ParseError, RemoteError
from .native._memo import Memo
from .settings import current, load_config

__all__ = [
    "OptimizeResult",
    "WorkerModule",
    "aoptimize",
    "apredict",
    "aretrieve",
    "chain_of_thought",
    "compile_signature",
    "explain",
    "optimize",
    "optimize_events",
    "predict",
    "predictor",
    "react",
    "retrieve",
    "router_stats",
    "signature",
    "tool_spec",
]

_OP_MODULE = {
    "predict": "Predict",
    "chain_of_thought": "ChainOfThought",
    "react": "ReAct",
    "program_of_thought": "ProgramOfThought",
    "multi_chain_comparison": "MultiChainComparison",
    "best_of_n": "BestOfN",
    "refine": "Refine",
    "code_act": "CodeAct",
}
_MODULE_OP = {v: k for k, v in _OP_MODULE.items()}


def _op_of(kind: str) -> str:
    key = kind.removeprefix("dspy.")
    if key in _MODULE_OP:
        return _MODULE_OP[key]
    key = key.lower()
    aliases = {"cot": "chain_of_thought", "chainofthought": "chain_of_thought", "pot": "program_of_thought"}
    key = aliases.get(key, key)
    if key not in _OP_MODULE:
        raise ValueError(f"unknown predictor type {kind!r}; one of {', '.join(_OP_MODULE)}")
    return key


# --------------------------------------------------------------------------- signatures

def signature(spec: Any, instructions: str | None = None) -> Any:
    """A native :class:`dspex.Signature` from a string, a class, or a Signature."""
    from .native.signature import signature as make

    with router.track("signature", "native"):
        return make(spec, instructions)


def compile_signature(spec: Any, instructions: str | None = None) -> Any:
    """Parse and validate ``spec`` once (errors carry the position); same as :func:`signature`."""
    from .native.signature import signature as make

    with router.track("compile_signature", "native"):
        return make(spec, instructions)


def _sig(spec: Any) -> Any:
    from .native.signature import ensure_signature

    return ensure_signature(spec)


# Annotations -> strings DSPy's signature parser reads back (custom classes travel by import path).
def _ann_str(ann: Any, custom: dict[str, str]) -> str:
    if ann is str or ann is None:
        return "str" if ann is str else "None"
    if ann is type(None):
        return "None"
    if ann is Any:
        return "Any"
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is typing.Union or (origin is not None and type(ann).__name__ == "UnionType"):
        parts = [a for a in args if a is not type(None)]
        if len(parts) == 1 and len(args) == 2:
            return f"Optional[{_ann_str(parts[0], custom)}]"
        return f"Union[{', '.join(_ann_str(a, custom) for a in args)}]"
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join('...' if a is ... else _ann_str(a, custom) for a in args)}]" if args else base
    if isinstance(ann, type):
        if ann.__module__ == "builtins":
            return ann.__name__
        if "<locals>" in ann.__qualname__:
            raise ImplementationUnavailable(
                f"type {ann.__qualname__} is defined inside a function, so a DSPy worker cannot import it; "
                "define it at module level"
            )
        custom[ann.__name__] = f"{ann.__module__}:{ann.__qualname__}"
        return ann.__name__
    return "Any"


_wires: Memo[dict[str, Any]] = Memo(256)


def signature_wire(sig: Any) -> dict[str, Any]:
    """A native Signature as the bridge's signature wire form (see bridge/_convert.py).

    Cached per signature (signatures are immutable values); treat the result as read-only.
    """
    return _wires.get(sig, lambda: _signature_wire(sig))


def _signature_wire(sig: Any) -> dict[str, Any]:
    from .native.signature import default_instructions, infer_prefix

    custom: dict[str, str] = {}

    def side(fields: Mapping[str, Any]) -> str:
        return ", ".join(
            name if f.annotation is str else f"{name}: {_ann_str(f.annotation, custom)}" for name, f in fields.items()
        )

    wire: dict[str, Any] = {"spec": f"{side(sig.input_fields)} -> {side(sig.output_fields)}"}
    if sig.instructions and sig.instructions != default_instructions(sig.input_fields, sig.output_fields):
        wire["instructions"] = sig.instructions
    fields: dict[str, dict[str, str]] = {}
    for name, f in sig.fields.items():
        extra = {}
        if not f.has_default_desc:
            extra["desc"] = f.desc
        if f.prefix != infer_prefix(name) + ":":
            extra["prefix"] = f.prefix
        if extra:
            fields[name] = extra
    if fields:
        wire["fields"] = fields
    if custom:
        wire["custom_types"] = custom
    return wire


# --------------------------------------------------------------------------- LMs, adapters, pools

def _lm_spec(lm: Any) -> Any:
    """What travels to a worker for ``lm`` (resolved like the native side when None)."""
    if lm is None:
        lm = current().lm
    if lm is None:
        from .native.predict import _fallback_lm

        lm = _fallback_lm()
    if isinstance(lm, (dict, str)):
        return lm
    to_spec = getattr(lm, "to_spec", None)
    if callable(to_spec):
        return to_spec()
    raise ImplementationUnavailable(
        f"{type(lm).__name__} cannot travel to a DSPy worker (it has no to_spec()); "
        "use a dspex.LM, an LM spec dict, or impl='native'"
    )


def _adapter_wire(adapter: Any) -> str | None:
    if adapter is None:
        adapter = current().adapter
    if adapter is None:
        return None
    if isinstance(adapter, str):
        return adapter
    name = type(adapter).__name__.lower().removesuffix("adapter")
    if name not in ("chat", "json", "xml"):
        raise ImplementationUnavailable(f"adapter {type(adapter).__name__} has no DSPy counterpart in the bridge")
    return name


def _native_adapter(adapter: Any) -> Any:
    if adapter is None or not isinstance(adapter, str):
        return adapter
    from .native.adapters import ChatAdapter, JSONAdapter

    key = adapter.lower().removesuffix("adapter")
    if key == "chat":
        return ChatAdapter()
    if key == "json":
        return JSONAdapter()
    raise ImplementationUnavailable(f"adapter {adapter!r} has no native implementation")


_fallback_pools: dict[str, Any] = {}
_fallback_lock = threading.Lock()


def _pool(name: str, pool: Any = None) -> Any:
    """The pool for ``name``: ``pool=`` (a Pool or a manager), ``dspex.context(pools={...})``,
    else the process-wide manager (pools start lazily from config)."""
    if pool is None:
        pools = current().get("pools")
        if isinstance(pools, Mapping):
            pool = pools.get(name) or pools.get("dspy")
        elif pools is not None:
            pool = pools
    if pool is not None:
        if hasattr(pool, "call_with"):
            return pool
        if hasattr(pool, "get"):
            return pool.get(name)
        raise TypeError(f"pool= takes a Pool or a PoolManager, not {type(pool).__name__}")
    try:
        from .pool import manager as default_manager
    except ImportError:  # the manager is optional: fall back to pools built from config here
        pass
    else:
        return default_manager().get(name)
    with _fallback_lock:  # until a PoolManager exists: pools from config, closed at exit by Pool
        p = _fallback_pools.get(name)
        if p is None:
            from .pool.pool import Pool

            conf = dict(load_config().get("pools", {}).get(name) or {})
            if not conf:
                raise ImplementationUnavailable(f"no pool named {name!r} in the config [pools] section")
            p = _fallback_pools[name] = Pool(name, **conf)
        return p


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
    from .native.values import Prediction

    pred = Prediction(**_coerce(sig, dict(result.get("outputs") or {})))
    if "trajectory" in result:
        pred["trajectory"] = result["trajectory"]
    usage = result.get("usage")
    if usage:
        pred.set_lm_usage(usage)
        for model, u in usage.items():
            current().record_usage(model, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    return pred


# --------------------------------------------------------------------------- predict

def _split_native_opts(opts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    kw = dict(opts)
    state = kw.pop("state", None)
    return kw, state


def _native_module(op: str, sig: Any, lm: Any, adapter: Any, opts: dict[str, Any]) -> Any:
    from .native.predict import ChainOfThought, Predict

    kw, state = _split_native_opts(opts)
    cls = ChainOfThought if op == "chain_of_thought" else Predict
    mod = cls(sig, lm=lm, adapter=_native_adapter(adapter), **kw)
    if state:
        mod.load_state(state)
    return mod


def _worker_payload(op: str, sig: Any, lm: Any, adapter: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``dspy.run``/``dspy.create`` for a predictor call."""
    options = dict(opts)
    state = options.pop("state", None)
    demos = options.pop("demos", None)
    instructions = options.pop("instructions", None)
    if instructions:
        sig = sig.with_instructions(instructions)
    if demos and state is None:
        # Demos travel as program state, in the DSPy JSON shape both sides read.
        state = _native_module(op if op in ("predict", "chain_of_thought") else "predict", sig, None, None,
                               {"demos": demos}).dump_state()
    config = options.pop("config", None) or {}
    options.update(config)
    payload: dict[str, Any] = {
        "module": _OP_MODULE[op],
        "signature": signature_wire(sig),
        "options": options or None,
        "adapter": _adapter_wire(adapter),
        "state": state,
        "lm": _lm_spec(lm),
        # Token usage only when someone collects it (a dspex.context() is open).
        "usage": bool(current().usage_sinks),
    }
    return payload


# Per-LM latency of recent dspy.run calls (EWMA, bounded). Calls that finish in a few ms
# are CPU-bound in the worker: they go to the inline handler (no thread hand-off);
# slower ones (real LM I/O) to the threaded one, which overlaps waits in one worker.
_FAST_S = 0.005
_lat: OrderedDict[str, float] = OrderedDict()
_lat_lock = threading.Lock()


def _lm_key(payload: dict[str, Any]) -> str:
    return json.dumps(payload.get("lm"), sort_keys=True, default=str)


def _run_handler(key: str) -> str:
    ew = _lat.get(key)
    return "dspy.run_inline" if ew is not None and ew < _FAST_S else "dspy.run"


def _observe(key: str, seconds: float) -> None:
    with _lat_lock:
        ew = _lat.get(key)
        _lat[key] = seconds if ew is None else 0.8 * ew + 0.2 * seconds
        _lat.move_to_end(key)
        while len(_lat) > 256:
            _lat.popitem(last=False)


def predict(sig: Any, inputs: Mapping[str, Any] | None = None, /, *, impl: str | None = None, lm: Any = None,
            adapter: Any = None, pool: Any = None, **opts: Any) -> Any:
    """One prediction for ``inputs`` with ``sig``, native or in a DSPy worker."""
    return _run_op("predict", sig, inputs, impl, lm, adapter, pool, opts)


async def apredict(sig: Any, inputs: Mapping[str, Any] | None = None, /, *, impl: str | None = None,
                   lm: Any = None, adapter: Any = None, pool: Any = None, **opts: Any) -> Any:
    return await _arun_op("predict", sig, inputs, impl, lm, adapter, pool, opts)


def _prep(op: str, sig: Any, inputs: Mapping[str, Any] | None, impl: str | None, adapter: Any,
          opts: dict[str, Any]) -> tuple[Any, dict[str, Any], router.Decision]:
    s = _sig(sig)
    decision = router.decide(op, s, impl=impl, adapter=adapter, **opts)
    return s, dict(inputs or {}), decision


def _run_op(op: str, sig: Any, inputs: Mapping[str, Any] | None, impl: str | None, lm: Any, adapter: Any,
            pool: Any, opts: dict[str, Any]) -> Any:
    s, ins, d = _prep(op, sig, inputs, impl, adapter, opts)
    with router.track(op, d.impl):
        if d.impl == "native":
            return _native_module(op, s, lm, adapter, opts)(**ins)
        payload = _worker_payload(op, s, lm, adapter, opts)
        key = _lm_key(payload)
        t0 = time.perf_counter()
        try:
            result = _pool("dspy", pool).call_with(_run_handler(key), kwargs={**payload, "inputs": ins})
        except RemoteError as exc:
            raise _remote(exc) from exc
        _observe(key, time.perf_counter() - t0)
        return _prediction(result, s)


async def _arun_op(op: str, sig: Any, inputs: Mapping[str, Any] | None, impl: str | None, lm: Any, adapter: Any,
                   pool: Any, opts: dict[str, Any]) -> Any:
    s, ins, d = _prep(op, sig, inputs, impl, adapter, opts)
    with router.track(op, d.impl):
        if d.impl == "native":
            return await _native_module(op, s, lm, adapter, opts).acall(**ins)
        payload = _worker_payload(op, s, lm, adapter, opts)
        key = _lm_key(payload)
        t0 = time.perf_counter()
        try:
            result = await _pool("dspy", pool).acall(_run_handler(key), **{**payload, "inputs": ins})
        except RemoteError as exc:
            raise _remote(exc) from exc
        _observe(key, time.perf_counter() - t0)
        return _prediction(result, s)


# --------------------------------------------------------------------------- tools

def tool_spec(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """What a worker needs to build a ``dspy.Tool`` that calls ``fn`` back in this process:
    its name, docstring and parameters (types from the hints, defaults)."""
    tname = name or getattr(fn, "__name__", None) or type(fn).__name__
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else getattr(fn, "__call__", fn)  # noqa: B004
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    params = []
    custom: dict[str, str] = {}
    for pname, p in inspect.signature(target).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        entry: dict[str, Any] = {"name": pname}
        try:
            entry["type"] = _ann_str(hints.get(pname, Any), custom) if pname in hints else "Any"
        except ImplementationUnavailable:
            entry["type"] = "Any"
        if custom:  # custom classes cannot be evaluated in the worker: accept any JSON value
            entry["type"], custom = "Any", {}
        if p.default is not p.empty:
            entry["default"] = p.default if isinstance(p.default, (str, int, float, bool, type(None))) else repr(p.default)
        params.append(entry)
    doc = getattr(fn, "__doc__", None) or ""
    return {"name": tname, "doc": doc, "parameters": params, "callback": f"dspex.tool.{tname}"}


def _tool_callback(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        def run_async(*args: Any, **kwargs: Any) -> Any:
            import asyncio

            return asyncio.run(fn(*args, **kwargs))

        return run_async
    return fn


# --------------------------------------------------------------------------- predictor handles

class WorkerModule:
    """A DSPy module living in a worker session: ``m(**inputs)``, ``await m.acall(**inputs)``,
    ``dump_state()/load_state()/save()/load()``, ``close()``.

    The session pins the module to one worker (affinity). If that worker is replaced
    (crash, recycling), the next call re-creates the module there with its last known
    state and retries once.
    """

    def __init__(self, op: str, sig: Any, *, lm: Any = None, adapter: Any = None, pool: Any = None,
                 tools: Iterable[Callable[..., Any]] | None = None, state: dict[str, Any] | None = None,
                 **options: Any):
        self.op = op
        self.signature = sig
        self.lm = lm
        self.adapter = adapter
        self._pool = _pool("dspy", pool)
        self.session = f"dspex-{op}-{uuid.uuid4().hex[:12]}"
        self.module_id = f"{_OP_MODULE[op]}-{uuid.uuid4().hex[:8]}"
        tool_list = list(tools or [])
        self._tool_specs = [tool_spec(t) for t in tool_list]
        self._callbacks = {s["callback"]: _tool_callback(t) for s, t in zip(self._tool_specs, tool_list, strict=True)}
        payload = _worker_payload(op, sig, lm, adapter, options)
        self._create = {
            "module": payload["module"],
            "signature": payload["signature"],
            "options": payload["options"],
            "tools": self._tool_specs or None,
            "module_id": self.module_id,
        }
        self._state: dict[str, Any] | None = state or payload["state"]
        self._closed = False
        self._do("dspy.create", {**self._create, "state": self._state})

    def __repr__(self) -> str:
        return f"WorkerModule({_OP_MODULE[self.op]}, {self.signature.to_string()}, session={self.session})"

    def _do(self, handler: str, kwargs: dict[str, Any], callbacks: Any = None) -> Any:
        try:
            return self._pool.call_with(handler, kwargs=kwargs, session=self.session, callbacks=callbacks)
        except RemoteError as exc:
            raise _remote(exc) from exc

    def _lost(self, exc: RemoteError) -> bool:
        return exc.remote_type.endswith("KeyError") and "no module" in exc.remote_message

    def _call_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"module_id": self.module_id, "inputs": inputs, "lm": _lm_spec(self.lm),
                "adapter": _adapter_wire(self.adapter), "usage": bool(current().usage_sinks)}

    def __call__(self, **inputs: Any) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with router.track(self.op, "dspy"):
            kwargs = self._call_kwargs(inputs)
            try:
                result = self._pool.call_with("dspy.call", kwargs=kwargs, session=self.session,
                                              callbacks=self._callbacks or None)
            except RemoteError as exc:
                if not self._lost(exc):
                    raise _remote(exc) from exc
                self._do("dspy.create", {**self._create, "state": self._state})
                try:
                    result = self._pool.call_with("dspy.call", kwargs=kwargs, session=self.session,
                                                  callbacks=self._callbacks or None)
                except RemoteError as exc2:
                    raise _remote(exc2) from exc2
            return _prediction(result, self.signature)

    async def acall(self, **inputs: Any) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        with router.track(self.op, "dspy"):
            kwargs = self._call_kwargs(inputs)
            try:
                result = await self._pool.acall("dspy.call", session=self.session,
                                                 callbacks=self._callbacks or None, **kwargs)
            except RemoteError as exc:
                if not self._lost(exc):
                    raise _remote(exc) from exc
                await self._pool.acall("dspy.create", session=self.session, **{**self._create, "state": self._state})
                result = await self._pool.acall("dspy.call", session=self.session,
                                                 callbacks=self._callbacks or None, **kwargs)
            return _prediction(result, self.signature)

    def dump_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._do("dspy.get_state", {"module_id": self.module_id})
        self._state = state
        return state

    def load_state(self, state: dict[str, Any]) -> WorkerModule:
        self._do("dspy.set_state", {"module_id": self.module_id, "state": state})
        self._state = state
        return self

    def save(self, path: str | Path) -> None:
        from .native.state import write_state

        write_state(path, self.dump_state())

    def load(self, path: str | Path) -> WorkerModule:
        from .native.state import read_state

        state = read_state(path)
        state.pop("metadata", None)
        return self.load_state(state)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pool.call_with("dspy.delete", kwargs={"module_id": self.module_id}, session=self.session)
        except Exception:
            pass  # the worker (and the module with it) may already be gone
        drop = getattr(self._pool, "drop_session", None)
        if callable(drop):
            try:
                drop(self.session)
            except Exception:
                pass

    def __enter__(self) -> WorkerModule:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def predictor(type: str = "predict", signature: Any = None, /, *, impl: str | None = None, lm: Any = None,
              adapter: Any = None, pool: Any = None, tools: Iterable[Callable[..., Any]] | None = None,
              **config: Any) -> Any:
    """A reusable predictor handle: native ``Predict``/``ChainOfThought`` when the router picks
    native, else a :class:`WorkerModule` (a DSPy module in a worker session)."""
    op = _op_of(type)
    if signature is None:
        signature = config.pop("signature", None)
    if signature is None:
        raise TypeError("predictor() needs a signature")
    s = _sig(signature)
    opts = dict(config)
    if tools is not None:
        opts["tools"] = tools
    d = router.decide(op, s, impl=impl, adapter=adapter, **opts)
    if d.impl == "native":
        return _native_module(op, s, lm, adapter, config)
    return WorkerModule(op, s, lm=lm, adapter=adapter, pool=pool, tools=tools, **config)


def chain_of_thought(sig: Any, *, impl: str | None = None, lm: Any = None, adapter: Any = None, pool: Any = None,
                     **config: Any) -> Any:
    """A ChainOfThought module (native or DSPy); call it with inputs as keyword arguments."""
    return predictor("chain_of_thought", sig, impl=impl, lm=lm, adapter=adapter, pool=pool, **config)


def react(sig: Any, tools: Iterable[Callable[..., Any]] = (), *, impl: str | None = None, lm: Any = None,
          adapter: Any = None, pool: Any = None, max_iters: int = 10, **config: Any) -> Any:
    """A ReAct agent (DSPy, in a worker) whose ``tools`` are host functions called back.

    A tool that raises becomes an observation (``Execution error in <tool>: ...``), as
    in DSPy. The prediction carries ``trajectory``.
    """
    return predictor("react", sig, impl=impl, lm=lm, adapter=adapter, pool=pool, tools=list(tools),
                     max_iters=max_iters, **config)


# --------------------------------------------------------------------------- optimize

@dataclass
class OptimizeResult:
    """An optimized program: its DSPy-shaped ``state`` and what the run reported."""

    state: dict[str, Any]
    module: str
    signature: Any
    optimizer: str
    score: float | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    metric_calls: int = 0
    lm_calls: int = 0
    elapsed_s: float = 0.0
    resumed: bool = False
    resumed_after: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    _program: Any = field(default=None, repr=False)

    @property
    def program(self) -> Any:
        """The optimized program as a native Predict / ChainOfThought (state loaded)."""
        if self._program is None:
            from .native.predict import ChainOfThought, Predict

            cls = ChainOfThought if self.module == "ChainOfThought" else Predict
            prog = cls(self.signature)
            prog.load_state(self.state)
            self._program = prog
        return self._program

    def save(self, path: str | Path) -> None:
        from .native.state import write_state

        write_state(path, self.state)

    def __call__(self, **inputs: Any) -> Any:
        return self.program(**inputs)


def _program_payload(program: Any) -> tuple[dict[str, Any], Any]:
    from .native.predict import ChainOfThought, Predict

    if isinstance(program, ChainOfThought):
        base = program.signature.delete("reasoning") if "reasoning" in program.signature.output_fields else program.signature
        return {"module": "ChainOfThought", "signature": signature_wire(base), "state": program.dump_state()}, base
    if isinstance(program, Predict):
        return {"module": "Predict", "signature": signature_wire(program.signature), "state": program.dump_state()}, \
            program.signature
    if isinstance(program, WorkerModule):
        if program.op not in ("predict", "chain_of_thought"):
            raise ImplementationUnavailable("optimize() takes Predict / ChainOfThought programs")
        return {"module": _OP_MODULE[program.op], "signature": signature_wire(program.signature),
                "state": program.dump_state()}, program.signature
    s = _sig(program)
    return {"module": "Predict", "signature": signature_wire(s), "state": None}, s


def _example_dict(ex: Any) -> tuple[dict[str, Any], list[str] | None]:
    if isinstance(ex, Mapping):
        return dict(ex), None
    items = getattr(ex, "items", None)
    if callable(items):
        keys = getattr(ex, "input_keys", None)
        return dict(items()), (sorted(keys) if keys else None)
    raise TypeError(f"trainset items are dicts or dspex.Example, not {type(ex).__name__}")


def _metric_wire(metric: Any) -> tuple[Any, dict[str, Callable[..., Any]]]:
    if isinstance(metric, str):
        return metric, {}
    if not callable(metric):
        raise TypeError("metric is 'module:function' or a callable(example, prediction)")
    from .native.values import Example, Prediction

    def host_metric(example: dict[str, Any], prediction: dict[str, Any]) -> Any:
        out = metric(Example(**example), Prediction(**prediction))
        if isinstance(out, bool):
            return float(out)
        if isinstance(out, (int, float, dict)):
            return out
        score = getattr(out, "score", None)
        if score is not None:
            return {"score": float(score), "feedback": str(getattr(out, "feedback", ""))}
        return float(out)

    return {"callback": "dspex.metric"}, {"dspex.metric": host_metric}


def _optimize_call(program: Any, trainset: Iterable[Any], optimizer: str, metric: Any, lm: Any,
                   valset: Iterable[Any] | None, input_keys: list[str] | None, checkpoint: str | Path | None,
                   prompt_lm: Any, reflection_lm: Any, teacher_lm: Any, adapter: Any,
                   options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Callable[..., Any]], Any]:
    prog, base_sig = _program_payload(program)
    rows = [_example_dict(e) for e in trainset]
    train = [r for r, _ in rows]
    keys = input_keys or next((k for _, k in rows if k), None)
    val = [_example_dict(e)[0] for e in valset] if valset is not None else None
    metric_w, callbacks = _metric_wire(metric) if optimizer.lower() not in ("labeled",) or metric else (None, {})
    kwargs: dict[str, Any] = {
        "optimizer": optimizer,
        "program": prog,
        "trainset": train,
        "metric": metric_w,
        "lm": _lm_spec(lm),
        "options": options or None,
        "valset": val,
        "input_keys": keys,
        "adapter": _adapter_wire(adapter),
        "prompt_lm": _lm_spec(prompt_lm) if prompt_lm is not None else None,
        "reflection_lm": _lm_spec(reflection_lm) if reflection_lm is not None else None,
        "teacher_lm": _lm_spec(teacher_lm) if teacher_lm is not None else None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
    }
    return kwargs, callbacks, base_sig


def _on_event(events: list[dict[str, Any]], progress: Callable[[dict[str, Any]], Any] | None) -> Callable[..., Any]:
    def handle(event: dict[str, Any]) -> None:
        if len(events) < 10_000:
            events.append(event)
        if progress is not None:
            progress(event)

    return handle


def _result(out: dict[str, Any], base_sig: Any, events: list[dict[str, Any]]) -> OptimizeResult:
    return OptimizeResult(
        state=out["state"], module=out["module"], signature=base_sig, optimizer=out["optimizer"],
        score=out.get("score"), trials=out.get("trials") or [], metric_calls=out.get("metric_calls", 0),
        lm_calls=out.get("lm_calls", 0), elapsed_s=out.get("elapsed_s", 0.0), resumed=bool(out.get("resumed")),
        resumed_after=int(out.get("resumed_after") or 0),
        events=events,
    )


def optimize(program: Any, trainset: Iterable[Any], *, optimizer: str = "miprov2", metric: Any = None,
             lm: Any = None, valset: Iterable[Any] | None = None, input_keys: list[str] | None = None,
             pool: Any = None, progress: Callable[[dict[str, Any]], Any] | None = None,
             checkpoint: str | Path | None = None, prompt_lm: Any = None, reflection_lm: Any = None,
             teacher_lm: Any = None, adapter: Any = None, impl: str | None = None, timeout: float | None = None,
             on_event: Callable[[dict[str, Any]], Any] | None = None, **options: Any) -> OptimizeResult:
    """Optimize ``program`` (a dspex Predict/ChainOfThought or a signature) with a DSPy optimizer
    in the ``optimizer`` pool. ``metric`` is ``"module:function"`` (run in the worker) or a
    host callable ``metric(example, prediction) -> float|bool`` (called back). ``progress``
    (or ``on_event``, the same) receives the events as they happen. Options go to the optimizer
    (see bridge/_optimize.py).
    """
    progress = progress or on_event
    router.decide("optimize", None, impl=impl)
    kwargs, callbacks, base_sig = _optimize_call(program, trainset, optimizer, metric, lm, valset, input_keys,
                                                 checkpoint, prompt_lm, reflection_lm, teacher_lm, adapter, options)
    events: list[dict[str, Any]] = []
    with router.track("optimize", "dspy"):
        try:
            out = _pool("optimizer", pool).call_with("dspy.optimize", kwargs=kwargs, callbacks=callbacks or None,
                                                     on_event=_on_event(events, progress), timeout=timeout)
        except RemoteError as exc:
            raise _remote(exc) from exc
    return _result(out, base_sig, events)


async def aoptimize(program: Any, trainset: Iterable[Any], *, optimizer: str = "miprov2", metric: Any = None,
                    lm: Any = None, valset: Iterable[Any] | None = None, input_keys: list[str] | None = None,
                    pool: Any = None, progress: Callable[[dict[str, Any]], Any] | None = None,
                    checkpoint: str | Path | None = None, prompt_lm: Any = None, reflection_lm: Any = None,
                    teacher_lm: Any = None, adapter: Any = None, impl: str | None = None,
                    timeout: float | None = None, on_event: Callable[[dict[str, Any]], Any] | None = None,
                    **options: Any) -> OptimizeResult:
    """The async form of :func:`optimize`. Cancelling the awaiting task cancels the worker call."""
    progress = progress or on_event
    router.decide("optimize", None, impl=impl)
    kwargs, callbacks, base_sig = _optimize_call(program, trainset, optimizer, metric, lm, valset, input_keys,
                                                 checkpoint, prompt_lm, reflection_lm, teacher_lm, adapter, options)
    events: list[dict[str, Any]] = []
    with router.track("optimize", "dspy"):
        try:
            out = await _pool("optimizer", pool).acall("dspy.optimize", callbacks=callbacks or None,
                                                       on_event=_on_event(events, progress), timeout=timeout, **kwargs)
        except RemoteError as exc:
            raise _remote(exc) from exc
    return _result(out, base_sig, events)


async def optimize_events(program: Any, trainset: Iterable[Any], **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
    """:func:`aoptimize` as an async iterator: yields progress events as they happen, then
    ``{"kind": "result", "result": OptimizeResult}``. Leaving the loop early cancels the run.

        async for event in dspex.api.optimize_events(prog, trainset, optimizer="miprov2", metric=m):
            print(event)
    """
    import asyncio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
    user = kwargs.pop("progress", None)

    def push(event: dict[str, Any]) -> None:  # runs on the pool's thread
        if user is not None:
            user(event)
        loop.call_soon_threadsafe(queue.put_nowait, event)

    task = asyncio.ensure_future(aoptimize(program, trainset, progress=push, **kwargs))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            yield {"kind": "result", "result": task.result()}
            return
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass


# --------------------------------------------------------------------------- retrieve

_bm25s: Memo[Any] = Memo(8)


def _bm25(name: str) -> Any:
    from .native.retrieve import BM25

    return _bm25s.get(name, lambda: BM25.from_path(name))


def _source(source: Any) -> tuple[str, Any]:
    """(kind, target) for a ``source=`` value."""
    if source is None:
        source = (load_config().get("retrieve") or {}).get("source", "bm25:solar_system")
    if isinstance(source, str):
        kind, sep, target = source.partition(":")
        if not sep or kind not in ("bm25", "dense", "colbert"):
            raise ValueError(f"source {source!r}: use 'bm25:<corpus>', 'dense:<corpus>' or 'colbert:<url>'")
        return kind, target or ("solar_system" if kind != "colbert" else "")
    if isinstance(source, list):
        return "corpus", source
    if hasattr(source, "search") or callable(source):
        return "object", source
    raise TypeError(f"unsupported retrieval source {type(source).__name__}")


def _normalize_hits(hits: Any, k: int) -> list[dict[str, Any]]:
    out = []
    for i, h in enumerate(list(hits)[:k]):
        if isinstance(h, str):
            out.append({"text": h, "pid": i, "score": None})
        else:
            d = dict(h)
            out.append({"text": d.get("text", d.get("long_text")), "pid": d.get("pid", i), "score": d.get("score")})
    return out


def _colbert_http(url: str, query: str, k: int) -> list[dict[str, Any]]:
    import urllib.parse
    import urllib.request  # here, not at import: it pulls in ssl and http.client

    q = urllib.parse.urlencode({"query": query, "k": k})
    with urllib.request.urlopen(f"{url}{'&' if '?' in url else '?'}{q}", timeout=10) as resp:
        body = json.loads(resp.read())
    if body.get("error"):
        raise RuntimeError(f"ColBERTv2 server error: {body.get('message')}")
    return _normalize_hits(body.get("topk", []), k)


def _retrieve_native(kind: str, target: Any, query: str, k: int) -> list[dict[str, Any]]:
    if kind == "bm25":
        return list(_bm25(target).search(query, k))
    if kind == "colbert":
        return _colbert_http(target, query, k)
    if kind == "corpus":
        from .native.retrieve import BM25

        return BM25(target).search(query, k)
    if hasattr(target, "search"):
        return _normalize_hits(target.search(query, k), k)
    return _normalize_hits(target(query, k), k)


def _retrieve_worker(kind: str, target: Any, query: str, k: int, embedder: str) -> tuple[str, dict[str, Any]]:
    if kind == "colbert":
        return "dspy.colbert_search", {"url": target, "query": query, "k": k}
    if kind in ("dense", "bm25", "corpus"):
        return "dspy.embed_search", {"query": query, "k": k, "corpus": target, "embedder": embedder}
    raise ImplementationUnavailable("retrieval from a Python object runs natively only")


def retrieve(query: str, k: int = 5, *, source: Any = None, impl: str | None = None, pool: Any = None,
             embedder: str = "hash") -> list[dict[str, Any]]:
    """The ``k`` best passages for ``query``: ``[{"text", "pid", "score"}]`` (see the module doc)."""
    kind, target = _source(source)
    d = router.decide("retrieve", None, impl=impl, source_kind=kind)
    with router.track("retrieve", d.impl):
        if d.impl == "native":
            return _retrieve_native(kind, target, query, k)
        handler, kwargs = _retrieve_worker(kind, target, query, k, embedder)
        try:
            return list(_pool("dspy", pool).call_with(handler, kwargs=kwargs))
        except RemoteError as exc:
            raise _remote(exc) from exc


async def aretrieve(query: str, k: int = 5, *, source: Any = None, impl: str | None = None, pool: Any = None,
                    embedder: str = "hash") -> list[dict[str, Any]]:
    kind, target = _source(source)
    d = router.decide("retrieve", None, impl=impl, source_kind=kind)
    with router.track("retrieve", d.impl):
        if d.impl == "native":
            import asyncio

            ctx = contextvars.copy_context()
            return await asyncio.to_thread(ctx.run, _retrieve_native, kind, target, query, k)
        handler, kwargs = _retrieve_worker(kind, target, query, k, embedder)
        try:
            return list(await _pool("dspy", pool).acall(handler, **kwargs))
        except RemoteError as exc:
            raise _remote(exc) from exc


# --------------------------------------------------------------------------- introspection

def explain(op: str, sig: Any = None, /, *, impl: str | None = None, **opts: Any) -> router.Decision:
    """Which implementation a call of ``op`` would use, and why (never raises for routing)."""
    op = _op_of(op) if op in _OP_MODULE or op.removeprefix("dspy.") in _MODULE_OP else op
    s = _sig(sig) if sig is not None else None
    if op == "retrieve" and "source" in opts:
        opts["source_kind"] = _source(opts.pop("source"))[0]
    if "tools" in opts:
        opts["tools"] = list(opts["tools"])
    return router.explain(op, s, impl=impl, **opts)


def router_stats() -> router.RouterStats:
    """Calls and latency per (operation, implementation); ``candidates`` ranks DSPy time."""
    return router.stats()
