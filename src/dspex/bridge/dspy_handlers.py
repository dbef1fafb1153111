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
import uuid
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy

from ..native._memo import Memo
from ..pool.handler import Context, handler
from ..wire import OP_MODULE, E, H, WireError, adapter_name
from ._convert import build_signature, import_object, prediction_to_dict, to_plain
from ._lm import build_lm
from ._tags import key_env, tagged

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
_run_cache: Memo[Any] = Memo(_RUN_CACHE_SIZE)
# Modules created without a session (ctx.state is per call then): bounded, oldest dropped.
_global_modules: Memo[Any] = Memo(_SESSION_MODULES_MAX)


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


def module_class(name: str) -> Any:
    key = name.removeprefix("dspy.")
    key = OP_MODULE.get(key, key)  # an op name ("chain_of_thought") names its module too
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
    key = adapter_name(name)
    if key is None:
        return None
    if key == "chat":
        return dspy.ChatAdapter()
    if key == "json":
        return dspy.JSONAdapter()
    if key == "xml":
        return dspy.XMLAdapter()
    if key == "two_step":
        raise WireError(E.UNSUPPORTED, "TwoStepAdapter needs its own extraction LM; not available through the "
                        "bridge yet: use adapter='chat', 'json' or 'xml'")
    raise ValueError(f"unknown adapter {name!r}: use 'chat', 'json' or 'xml'")


def _invoke(ctx: Context, mod: Any, inputs: dict[str, Any], lm: Any, adapter: Any, usage: bool = True) -> dict[str, Any]:
    # DSPy's usage tracker costs ~25% of an instant call: only when the caller collects usage.
    overrides: dict[str, Any] = {"track_usage": True} if usage else {}
    key_env(lm)
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


def _session_store(ctx: Context, name: str = "dspex.modules", size: int = _SESSION_MODULES_MAX) -> Memo[Any]:
    if ctx.session is None:
        return _global_modules if name == "dspex.modules" else _run_cache
    store: Memo[Any] = ctx.state.setdefault(name, Memo(size))  # setdefault is atomic
    return store


# --------------------------------------------------------------------------- handlers

@handler(H.PING, concurrent=True)
@tagged
def ping(ctx: Context) -> dict[str, Any]:
    return {"pid": os.getpid(), "dspy": dspy.__version__, "session": ctx.session}


@handler(H.RUN, concurrent=True)
@tagged
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
    cache = _session_store(ctx, "dspex.run_cache", _RUN_CACHE_SIZE)
    mod = cache.get(key, lambda: build_module(module, signature, options, tools, state))
    return _invoke(ctx, mod, inputs, lm, adapter, usage)


@handler(H.RUN_INLINE)
@tagged
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


@handler(H.CREATE, concurrent=True)
@tagged
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
    _session_store(ctx).put(mid, mod)
    return {"module_id": mid, "pid": os.getpid()}


def _module(ctx: Context, module_id: str) -> Any:
    mod = _session_store(ctx).peek(module_id)
    if mod is None:
        raise WireError(
            E.MODULE_LOST,
            f"no module {module_id!r} in this worker (session {ctx.session!r}); it was deleted, "
            "evicted, or its worker was replaced: create it again",
        )
    return mod


@handler(H.CALL, concurrent=True)
@tagged
def call(
    ctx: Context, module_id: str, inputs: dict[str, Any], lm: Any = None, adapter: Any = None, usage: bool = True
) -> dict[str, Any]:
    return _invoke(ctx, _module(ctx, module_id), inputs, lm, adapter, usage)


@handler(H.GET_STATE, concurrent=True)
@tagged
def get_state(ctx: Context, module_id: str) -> dict[str, Any]:
    return to_plain(_module(ctx, module_id).dump_state())


@handler(H.SET_STATE, concurrent=True)
@tagged
def set_state(ctx: Context, module_id: str, state: dict[str, Any]) -> bool:
    load_state(_module(ctx, module_id), state)
    return True


@handler(H.DELETE, concurrent=True)
@tagged
def delete(ctx: Context, module_id: str) -> bool:
    return _session_store(ctx).pop(module_id) is not None


@handler(H.MODULES, concurrent=True)
@tagged
def modules(ctx: Context) -> list[str]:
    return [str(k) for k in _session_store(ctx).list_keys()]


@handler(H.OPTIMIZE, concurrent=True)
@tagged
def optimize(ctx: Context, **kwargs: Any) -> dict[str, Any]:
    """Run a DSPy optimizer; streams progress events; returns the program state."""
    from ._optimize import run_optimizer

    for name in ("lm", "prompt_lm", "reflection_lm", "teacher_lm"):
        key_env(kwargs.get(name))
    token = _bind(ctx)
    try:
        return run_optimizer(ctx, **kwargs)
    finally:
        _CURRENT.reset(token)


@handler(H.EMBED_SEARCH, concurrent=True)
@tagged
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


@handler(H.COLBERT_SEARCH, concurrent=True)
@tagged
def colbert_search(ctx: Context, url: str, query: str, k: int = 5, post: bool = False) -> list[dict[str, Any]]:
    """Query a ColBERTv2-protocol server with DSPy's own client (``dspy.ColBERTv2``)."""
    hits = dspy.ColBERTv2(url=url, post_requests=post)(query, k=k)
    return [{"text": h["long_text"], "pid": h.get("pid"), "score": h.get("score")} for h in hits]


from . import _program as _program  # noqa: E402 - registers dspy.program (composite dspex.Module programs)
