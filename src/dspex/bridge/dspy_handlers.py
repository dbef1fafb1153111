"""DSPy as pool handlers. This module runs inside worker processes only.

The handler names are the contract the host (router, api, pipelines) relies on:

    dspy.ping                                       -> {"pid", "dspy"}
    dspy.run(module, signature, inputs, lm=None, options=None, adapter=None,
             state=None, tools=None)                -> {"outputs", "usage", "pid", "trajectory"?}
    dspy.create(module, signature, options=None, module_id=None, tools=None,
                state=None)                         -> {"module_id", "pid"}
    dspy.call(module_id, inputs, lm=None, adapter=None)  -> like dspy.run
    dspy.get_state(module_id) -> dict   dspy.set_state(module_id, state)
    dspy.delete(module_id) -> bool      dspy.modules() -> [module ids]
    dspy.optimize(...)                              see _optimize.run_optimizer
    dspy.embed_search(query, k, corpus=..., embedder=...) -> [{"text","pid","score"}]
    dspy.colbert_search(url, query, k)              -> the same, through dspy.ColBERTv2

Rules this module keeps:

* The LM (and adapter) is bound per call with ``dspy.context(...)``: never
  ``dspy.configure`` per request, so concurrent calls (threads) and sessions never
  see each other's LM.
* ``module`` is a name on an allowlist (``ALLOWED_MODULES``; extend it with the
  worker env ``DSPEX_BRIDGE_MODULES="pkg.mod:Class,..."``), never arbitrary code.
* Modules made by ``dspy.create`` live in the session's state in this worker (use
  a session with affinity); ``dspy.run`` reuses built modules from a small LRU.
* ReAct tools and reward functions that live in the host are called back through
  ``ctx.callback``; a host exception becomes the tool's observation exactly as DSPy
  does it (``Execution error in <tool>: ...``).
* Return values are msgpack-friendly (see ``_convert.to_plain``).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from ..pool.handler import Context, handler
from ._convert import build_signature, import_object, prediction_to_dict, to_plain
from ._lm import build_lm

__all__ = ["ALLOWED_MODULES", "build_module", "current_context"]

# A worker's DSPy cache: memory only and bounded (DSPy's default is 1M entries plus
# a disk cache under ~/.dspy_cache). Set once at import, not per request.
if os.environ.get("DSPEX_DSPY_CACHE", "memory").lower() in ("off", "0", "false", "no"):
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
else:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True, memory_max_entries=10_000)

_CURRENT: contextvars.ContextVar[Context | None] = contextvars.ContextVar("dspex_bridge_ctx", default=None)
# Threads DSPy starts itself (ParallelExecutor) do not inherit our ContextVar; the last
# context set in this process is the fallback for them (one call in flight per worker
# for optimizers, which is where DSPy starts threads).
_last_ctx: Context | None = None

_RUN_CACHE_SIZE = 64
_SESSION_MODULES_MAX = 256
_run_cache: OrderedDict[str, Any] = OrderedDict()
_run_lock = threading.Lock()
# Modules created without a session (ctx.state is per call then): bounded, oldest dropped.
_global_modules: OrderedDict[str, Any] = OrderedDict()
_global_lock = threading.Lock()


def current_context() -> Context:
    ctx = _CURRENT.get() or _last_ctx
    if ctx is None:
        raise RuntimeError("no pool call is running in this worker thread; host callbacks need one")
    return ctx


def _bind(ctx: Context) -> contextvars.Token[Context | None]:
    global _last_ctx
    _last_ctx = ctx
    return _CURRENT.set(ctx)


# --------------------------------------------------------------------------- modules

def _host_function(spec: Any, what: str) -> Callable[..., Any]:
    """A function given by the host: ``"pkg.mod:fn"`` (imported here) or ``{"callback": name}``."""
    if isinstance(spec, str):
        fn = import_object(spec)
        if not callable(fn):
            raise TypeError(f"{what} {spec!r} is not callable")
        return fn
    if isinstance(spec, dict) and isinstance(spec.get("callback"), str):
        name = spec["callback"]

        def call_host(*args: Any, **kwargs: Any) -> Any:
            return current_context().callback(name, *[to_plain(a) for a in args], **to_plain(kwargs))

        call_host.__name__ = name
        return call_host
    raise TypeError(f"{what} must be 'module:function' or {{'callback': name}}, not {spec!r:.100}")


_TYPE_NAMES: dict[str, Any] = {}


def _type_namespace() -> dict[str, Any]:
    if not _TYPE_NAMES:
        import typing

        _TYPE_NAMES.update(
            {
                "str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict,
                "tuple": tuple, "set": set, "bytes": bytes, "None": None, "NoneType": type(None),
                "Any": typing.Any, "Optional": typing.Optional, "Union": typing.Union,
                "Literal": typing.Literal, "List": list, "Dict": dict,
            }
        )
    return _TYPE_NAMES


def _param_schema(param: dict[str, Any]) -> dict[str, Any]:
    """JSON schema of one tool parameter, built the way dspy.Tool builds it from a function."""
    if isinstance(param.get("schema"), dict):
        schema = dict(param["schema"])
    else:
        from dspy.adapters.types.tool import _resolve_json_schema_reference
        from pydantic import TypeAdapter

        type_str = param.get("type") or "Any"
        try:
            ann = eval(type_str, {"__builtins__": {}}, _type_namespace())  # names above only
        except Exception:
            ann = Any
        schema = _resolve_json_schema_reference(TypeAdapter(ann).json_schema())
    if "default" in param:
        schema["default"] = param["default"]
    if param.get("desc"):
        schema["description"] = param["desc"]
    return schema


def _make_tool(spec: dict[str, Any]) -> Any:
    """A dspy.Tool whose function calls the host tool ``spec["callback"]`` back."""
    name = spec["name"]
    call_host = _host_function({"callback": spec.get("callback", name)}, f"tool {name!r}")
    params = spec.get("parameters") or []
    args = {p["name"]: _param_schema(p) for p in params}
    return dspy.Tool(call_host, name=name, desc=spec.get("doc") or "", args=args)


def _allowed_modules() -> dict[str, Any]:
    mods = {
        "Predict": dspy.Predict,
        "ChainOfThought": dspy.ChainOfThought,
        "ReAct": dspy.ReAct,
        "ProgramOfThought": dspy.ProgramOfThought,
        "MultiChainComparison": dspy.MultiChainComparison,
        "BestOfN": dspy.BestOfN,
        "Refine": dspy.Refine,
        "CodeAct": dspy.CodeAct,
    }
    for path in filter(None, (p.strip() for p in os.environ.get("DSPEX_BRIDGE_MODULES", "").split(","))):
        obj = import_object(path)
        mods[path] = obj
        mods.setdefault(path.rpartition(":")[2].rpartition(".")[2], obj)
    return mods


ALLOWED_MODULES: dict[str, Any] = _allowed_modules()
_SNAKE = {
    "predict": "Predict", "chain_of_thought": "ChainOfThought", "react": "ReAct",
    "program_of_thought": "ProgramOfThought", "multi_chain_comparison": "MultiChainComparison",
    "best_of_n": "BestOfN", "refine": "Refine", "code_act": "CodeAct",
}


def module_class(name: str) -> Any:
    key = name.removeprefix("dspy.")
    key = _SNAKE.get(key, key)
    cls = ALLOWED_MODULES.get(key)
    if cls is None:
        raise ValueError(
            f"module {name!r} is not on the bridge allowlist ({', '.join(sorted(ALLOWED_MODULES))}); "
            "extend it with the worker env DSPEX_BRIDGE_MODULES='package.module:Class'"
        )
    return cls


def build_module(
    module: str,
    signature: Any,
    options: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
) -> Any:
    """Instantiate an allowlisted DSPy module for ``signature`` and load ``state``."""
    opts = dict(options or {})
    cls = module_class(module)
    sig = build_signature(signature)
    if cls in (dspy.BestOfN, dspy.Refine):
        inner = build_module(opts.pop("module", "Predict"), signature, opts.pop("module_options", None), tools)
        reward = _host_function(opts.pop("reward_fn"), "reward_fn") if "reward_fn" in opts else (lambda a, p: 1.0)
        mod = cls(module=inner, N=int(opts.pop("N", 3)), reward_fn=reward, threshold=float(opts.pop("threshold", 1.0)), **opts)
    elif cls in (dspy.ReAct, dspy.CodeAct):
        mod = cls(sig, tools=[_make_tool(t) for t in tools or []], **opts)
    else:
        mod = cls(sig, **opts)
    if state:
        load_state(mod, state)
    return mod


def load_state(mod: Any, state: dict[str, Any]) -> None:
    # The LM is bound per call; a state's "lm" entry (which would rebuild an LM with
    # whatever api_base it names) is dropped.
    def strip(s: Any) -> Any:
        if isinstance(s, dict):
            return {k: (None if k == "lm" else strip(v)) for k, v in s.items()}
        return s

    mod.load_state(strip(state))


def _adapter(name: Any) -> Any:
    if name is None:
        return None
    key = str(name).lower().removesuffix("adapter")
    if key == "chat":
        return dspy.ChatAdapter()
    if key == "json":
        return dspy.JSONAdapter()
    if key == "xml":
        return dspy.XMLAdapter()
    if key in ("two_step", "twostep"):
        raise ValueError("TwoStepAdapter needs its own extraction LM; not available through the bridge yet")
    raise ValueError(f"unknown adapter {name!r}: use 'chat', 'json' or 'xml'")


def _invoke(ctx: Context, mod: Any, inputs: dict[str, Any], lm: Any, adapter: Any, usage: bool = True) -> dict[str, Any]:
    # DSPy's usage tracker costs ~25% of an instant call: only when the caller collects usage.
    overrides: dict[str, Any] = {"track_usage": True} if usage else {}
    lm_obj = build_lm(lm)
    if lm_obj is not None:
        overrides["lm"] = lm_obj
    ad = _adapter(adapter)
    if ad is not None:
        overrides["adapter"] = ad
    token = _bind(ctx)
    try:
        with dspy.context(**overrides):
            pred = mod(**(inputs or {}))
    finally:
        _CURRENT.reset(token)
    outputs = prediction_to_dict(pred)
    out: dict[str, Any] = {"outputs": outputs, "pid": os.getpid()}
    trajectory = outputs.pop("trajectory", None)
    if trajectory is not None:
        out["trajectory"] = trajectory
    get_usage = getattr(pred, "get_lm_usage", None) if usage else None
    out["usage"] = to_plain((get_usage() if callable(get_usage) else None) or {})
    return out


def _key(*parts: Any) -> str:
    # The JSON text is the key; hashed only when long (a state with demos), to bound memory.
    text = json.dumps(parts, sort_keys=True, default=str)
    return text if len(text) <= 512 else hashlib.sha1(text.encode()).hexdigest()


def _lru_get(cache: OrderedDict[str, Any], lock: threading.Lock, key: str) -> Any:
    with lock:
        mod = cache.get(key)
        if mod is not None:
            cache.move_to_end(key)
        return mod


def _lru_put(cache: OrderedDict[str, Any], lock: threading.Lock, key: str, mod: Any, limit: int) -> None:
    with lock:
        cache[key] = mod
        while len(cache) > limit:
            cache.popitem(last=False)


def _session_store(ctx: Context) -> tuple[OrderedDict[str, Any], threading.Lock]:
    if ctx.session is None:
        return _global_modules, _global_lock
    store = ctx.state.setdefault("dspex.modules", OrderedDict())  # setdefault is atomic
    lock = ctx.state.setdefault("dspex.lock", threading.Lock())
    return store, lock


# --------------------------------------------------------------------------- handlers

@handler("dspy.ping", concurrent=True)
def ping(ctx: Context) -> dict[str, Any]:
    return {"pid": os.getpid(), "dspy": dspy.__version__, "session": ctx.session}


@handler("dspy.run", concurrent=True)
def run(
    ctx: Context,
    module: str,
    signature: Any,
    inputs: dict[str, Any],
    lm: Any = None,
    options: dict[str, Any] | None = None,
    adapter: Any = None,
    state: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    usage: bool = True,
) -> dict[str, Any]:
    """Build (or reuse) ``dspy.<module>(signature, **options)`` and call it once.

    ``usage=False`` skips DSPy's token-usage tracking (the result's ``usage`` is ``{}``).
    """
    key = _key(module, signature, options, tools, state)
    if ctx.session is None:
        cache, lock = _run_cache, _run_lock
    else:
        cache = ctx.state.setdefault("dspex.run_cache", OrderedDict())
        lock = ctx.state.setdefault("dspex.lock", threading.Lock())
    mod = _lru_get(cache, lock, key)
    if mod is None:
        mod = build_module(module, signature, options, tools, state)
        _lru_put(cache, lock, key, mod, _RUN_CACHE_SIZE)
    return _invoke(ctx, mod, inputs, lm, adapter, usage)


@handler("dspy.run_inline")
def run_inline(
    ctx: Context,
    module: str,
    signature: Any,
    inputs: dict[str, Any],
    lm: Any = None,
    options: dict[str, Any] | None = None,
    adapter: Any = None,
    state: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    usage: bool = True,
) -> dict[str, Any]:
    """``dspy.run`` on the worker's main thread, one call at a time per worker.

    No thread hand-off, which on a busy machine costs more than a fast call itself;
    no overlap of slow LM waits either. The API picks it for calls it has seen finish
    in a few milliseconds (CPU-bound: nothing to overlap) and ``dspy.run`` otherwise.
    """
    return run(ctx, module, signature, inputs, lm, options, adapter, state, tools, usage)


@handler("dspy.create", concurrent=True)
def create(
    ctx: Context,
    module: str,
    signature: Any,
    options: dict[str, Any] | None = None,
    module_id: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    mod = build_module(module, signature, options, tools, state)
    mid = module_id or f"{module}-{uuid.uuid4().hex[:12]}"
    store, lock = _session_store(ctx)
    _lru_put(store, lock, mid, mod, _SESSION_MODULES_MAX)
    return {"module_id": mid, "pid": os.getpid()}


def _module(ctx: Context, module_id: str) -> Any:
    store, lock = _session_store(ctx)
    mod = _lru_get(store, lock, module_id)
    if mod is None:
        raise KeyError(
            f"no module {module_id!r} in this worker (session {ctx.session!r}); it was deleted, "
            "evicted, or its worker was replaced: create it again"
        )
    return mod


@handler("dspy.call", concurrent=True)
def call(
    ctx: Context, module_id: str, inputs: dict[str, Any], lm: Any = None, adapter: Any = None, usage: bool = True
) -> dict[str, Any]:
    return _invoke(ctx, _module(ctx, module_id), inputs, lm, adapter, usage)


@handler("dspy.get_state", concurrent=True)
def get_state(ctx: Context, module_id: str) -> dict[str, Any]:
    return to_plain(_module(ctx, module_id).dump_state())


@handler("dspy.set_state", concurrent=True)
def set_state(ctx: Context, module_id: str, state: dict[str, Any]) -> bool:
    load_state(_module(ctx, module_id), state)
    return True


@handler("dspy.delete", concurrent=True)
def delete(ctx: Context, module_id: str) -> bool:
    store, lock = _session_store(ctx)
    with lock:
        return store.pop(module_id, None) is not None


@handler("dspy.modules", concurrent=True)
def modules(ctx: Context) -> list[str]:
    store, lock = _session_store(ctx)
    with lock:
        return list(store)


@handler("dspy.optimize", concurrent=True)
def optimize(ctx: Context, **kwargs: Any) -> dict[str, Any]:
    """Run a DSPy optimizer; streams progress events; returns the program state."""
    from ._optimize import run_optimizer

    token = _bind(ctx)
    try:
        return run_optimizer(ctx, **kwargs)
    finally:
        _CURRENT.reset(token)


@handler("dspy.embed_search", concurrent=True)
def embed_search(
    ctx: Context,
    query: str | list[str],
    k: int = 5,
    corpus: Any = "solar_system",
    embedder: str = "hash",
) -> Any:
    """Dense retrieval with ``dspy.retrievers.Embeddings`` and a local embedder."""
    from ._retrieval import embed_search as search

    return search(query, k, corpus=corpus, embedder=embedder)


@handler("dspy.colbert_search", concurrent=True)
def colbert_search(ctx: Context, url: str, query: str, k: int = 5, post: bool = False) -> list[dict[str, Any]]:
    """Query a ColBERTv2-protocol server with DSPy's own client (``dspy.ColBERTv2``)."""
    hits = dspy.ColBERTv2(url=url, post_requests=post)(query, k=k)
    return [{"text": h["long_text"], "pid": h.get("pid"), "score": h.get("score")} for h in hits]
