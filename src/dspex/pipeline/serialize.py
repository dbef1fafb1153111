"""Saving pipelines to YAML/JSON and loading them back, with an allowlist for code.

A saved pipeline is data: steps, their options, signatures, pool and handler names.
Code is only referenced: a callable is saved as the name it was registered under
(``register("clean", fn)``) or as ``"package.module:function"``. Loading resolves a
registered name from the registry, and imports a ``module:function`` reference only
when it matches one of the ``allow=`` patterns (``fnmatch``: ``"mypkg.steps:*"``).
Anything else is reported, all at once, as a ``PipelineError`` that says how to allow it.

Not saved: LM objects (give ``lm=`` to ``load`` or to the run) and Pool objects (pools
are saved by name; pass ``pools=`` to ``load`` for unconfigured ones).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PipelineError
from .steps import Branch, FanOut, NativeStep, OpStep, Parallel, Step, WorkerStep, _sig_string

if TYPE_CHECKING:
    from .core import Pipeline

__all__ = ["load", "pipeline_from_dict", "pipeline_to_dict", "register", "registered", "save", "unregister"]

FORMAT_VERSION = 1

_registry: dict[str, Any] = {}
_registry_lock = threading.Lock()


def register(name: str, obj: Any = None) -> Any:
    """Register a callable (or native module) under ``name`` so saved pipelines can
    reference it and ``Pipeline.load`` resolves it without importing anything.
    Usable as ``register("clean", fn)`` or as a decorator ``@register("clean")``."""
    if ":" in name:
        raise ValueError(f"registered names cannot contain ':' ({name!r}); that is for module:function refs")

    def put(value: Any) -> Any:
        with _registry_lock:
            _registry[name] = value
        return value

    return put if obj is None else put(obj)


def unregister(name: str) -> None:
    with _registry_lock:
        _registry.pop(name, None)


def registered() -> dict[str, Any]:
    with _registry_lock:
        return dict(_registry)


# --- saving ------------------------------------------------------------------------------------
def _ref(obj: Any, problems: list[str], where: str) -> str:
    with _registry_lock:
        for name, value in _registry.items():
            if value is obj:
                return name
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname and "<" not in qualname and module != "__main__":
        try:
            found: Any = importlib.import_module(module)
            for part in qualname.split("."):
                found = getattr(found, part)
            if found is obj:
                return f"{module}:{qualname}"
        except (ImportError, AttributeError):
            pass
    problems.append(
        f"{where}: {obj!r} cannot be saved by reference (a lambda, a local or __main__ function, or an "
        "instance); register it with register('name', obj) from dspex.pipeline or use a module-level function"
    )
    return "?"


def _reads(step: Step) -> Any:
    if step.arg_map:
        return {step.arg_map.get(f, f): f for f in step.reads}
    return list(step.reads)


def _common(step: Step, d: dict[str, Any], problems: list[str], where: str) -> dict[str, Any]:
    if step.timeout is not None:
        d["timeout"] = step.timeout
    if step.retries:
        d["retries"] = step.retries
        d["backoff"] = step.backoff
    if step.cache_size:
        d["cache"] = step.cache_size
    if step.fallback is not None:
        d["fallback"] = step_to_dict(step.fallback, problems, f"{where} fallback")
    return d


def step_to_dict(step: Step, problems: list[str], where: str = "") -> dict[str, Any]:
    where = where or f"step {step.name!r}"
    d: dict[str, Any] = {"name": step.name}
    if isinstance(step, NativeStep):
        d["type"] = "native"
        if step.mode == "signature":
            d["signature"] = _sig_string(step.signature)
            if step.module_name != "Predict":
                d["module"] = step.module_name
            if step.instructions is not None:
                d["instructions"] = step.instructions
        elif step.mode == "template":
            d["template"] = getattr(step.target, "text", None) or getattr(step.target, "source", "")
            d["writes"] = list(step.writes)
        elif step.mode == "module" and type(step.target).__module__.startswith("dspex.native"):
            d["predictor"] = type(step.target).__name__
            sig = step.signature
            if d["predictor"] == "ChainOfThought" and "reasoning" in sig.output_fields:
                sig = sig.delete("reasoning")  # ChainOfThought adds it again when loaded
            d["signature"] = _sig_string(sig)
            dump = getattr(step.target, "dump_state", None)
            if callable(dump):
                d["state"] = dump()
        else:
            d["call"] = _ref(step.target, problems, where)
            d["reads"] = _reads(step)
            d["writes"] = list(step.writes)
            if step.inline:
                d["inline"] = True
    elif isinstance(step, WorkerStep):
        d["type"] = "worker"
        d["pool"] = step.pool_name()
        if step.module is not None:
            d["module"] = step.module
            d["signature"] = step.signature_text
            if step.options:
                d["options"] = dict(step.options)
            if step.adapter is not None:
                d["adapter"] = step.adapter
            if isinstance(step.state, str | Path):
                d["state"] = str(step.state)
            elif step.state is not None:
                d["state"] = step.state
            if step.tools:
                problems.append(f"{where}: tools (host functions) cannot be saved; add them after load")
        else:
            d["handler"] = step.handler
            d["reads"] = _reads(step)
            d["writes"] = list(step.writes)
        if step.params:
            d["params"] = dict(step.params)
    elif isinstance(step, OpStep):
        d.update({"type": "op", "op": step.op, "reads": _reads(step), "writes": list(step.writes)})
        if step.impl is not None:
            d["impl"] = step.impl
        if isinstance(step.pool, str):
            d["pool"] = step.pool
        elif step.pool is not None:
            problems.append(f"{where}: a Pool object cannot be saved; name the pool (pool='dspy')")
        for key, value in step.arguments.items():
            if isinstance(value, str | int | float | bool) or value is None:
                d[key] = value
            else:
                problems.append(f"{where}: op argument {key!r} ({type(value).__name__}) cannot be saved")
    elif isinstance(step, Parallel):
        d["type"] = "parallel"
        d["steps"] = [step_to_dict(s, problems) for s in step.steps]
        if step.concurrency is not None:
            d["concurrency"] = step.concurrency
        if step.on_error != "fail_fast":
            d["on_error"] = step.on_error
        if step.into is not None:
            d["into"] = step.into
    elif isinstance(step, Branch):
        d["type"] = "branch"
        if isinstance(step.condition, str):
            d["condition"] = step.condition
        else:
            d["condition"] = {"call": _ref(step.condition, problems, f"{where} condition")}
            extra = [r for r in step.condition_reads]
            if extra:
                d["reads"] = extra
        d["then"] = [step_to_dict(s, problems) for s in step.then]
        if step.otherwise:
            d["otherwise"] = [step_to_dict(s, problems) for s in step.otherwise]
    elif isinstance(step, FanOut):
        d["type"] = "fan_out"
        d["step"] = step_to_dict(step.step, problems)
        d["over"] = step.over
        d["into"] = step.into
        if step.item is not None:
            d["item"] = step.item
        d["concurrency"] = step.concurrency
        if step.on_error != "fail_fast":
            d["on_error"] = step.on_error
    else:
        problems.append(f"{where}: cannot save a {type(step).__name__}")
    return _common(step, d, problems, where)


def pipeline_to_dict(p: Pipeline) -> dict[str, Any]:
    problems: list[str] = []
    out: dict[str, Any] = {"dspex_pipeline": FORMAT_VERSION, "name": p.name}
    if p.inputs is not None:
        out["inputs"] = list(p.inputs)
    out["steps"] = [step_to_dict(s, problems) for s in p.steps]
    if problems:
        raise PipelineError(problems)
    return out


def save(p: Pipeline, path: str | Path) -> Path:
    path = Path(path)
    data = pipeline_to_dict(p)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        import yaml  # lazily: `import dspex` stays light

        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    path.write_text(text)
    return path


# --- loading --------------------------------------------------------------------------------------
class _Loader:
    def __init__(self, allow: Sequence[str]):
        self.allow = [a.strip() for a in allow]
        self.problems: list[str] = []

    def resolve(self, ref: Any, where: str) -> Any:
        if not isinstance(ref, str) or not ref:
            self.problems.append(f"{where}: a callable reference must be a string, got {ref!r}")
            return None
        if ":" not in ref:
            with _registry_lock:
                if ref in _registry:
                    return _registry[ref]
            self.problems.append(
                f"{where}: {ref!r} is not a registered name; call register({ref!r}, fn) (from dspex.pipeline import register) "
                "before loading, or reference it as 'package.module:function' with an allow= pattern"
            )
            return None
        if not any(fnmatch.fnmatchcase(ref, pat) for pat in self.allow):
            module = ref.split(":", 1)[0]
            self.problems.append(
                f"{where}: callable {ref!r} is not allowed; pass allow=[{ref!r}] (or {module + ':*'!r}) "
                f"to Pipeline.load, or register it with register('name', fn) from dspex.pipeline"
            )
            return None
        module, _, qualname = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            self.problems.append(f"{where}: cannot import {ref!r}: {exc}")
            return None
        return obj

    def steps(self, items: Any, where: str) -> list[Step]:
        if not isinstance(items, list):
            self.problems.append(f"{where}: steps must be a list, got {type(items).__name__}")
            return []
        out = []
        for i, item in enumerate(items):
            s = self.step(item, f"{where}[{i}]")
            if s is not None:
                out.append(s)
        return out

    def step(self, d: Any, where: str) -> Step | None:
        if not isinstance(d, Mapping) or "type" not in d:
            self.problems.append(f"{where}: a step must be a mapping with a 'type', got {d!r}")
            return None
        d = dict(d)
        kind = d.pop("type")
        name = d.get("name")
        where = f"{where} ({name})" if name else where
        common: dict[str, Any] = {k: d.pop(k) for k in ("timeout", "retries", "backoff", "cache") if k in d}
        if "fallback" in d:
            fb = self.step(d.pop("fallback"), f"{where} fallback")
            if fb is not None:
                common["fallback"] = fb
        try:
            return self._build(kind, d, common, where)
        except PipelineError as exc:
            self.problems += [f"{where}: {p}" for p in exc.problems]
        except (TypeError, ValueError) as exc:
            self.problems.append(f"{where}: {exc}")
        return None

    def _build(self, kind: str, d: dict[str, Any], common: dict[str, Any], where: str) -> Step | None:
        from . import steps as st

        if kind == "native":
            if "call" in d:
                fn = self.resolve(d.pop("call"), where)
                if fn is None:
                    return None
                return st.native(fn, **d, **common)
            if "template" in d:
                from ..native.template import Template

                return st.native(Template(d.pop("template")), **d, **common)
            if "predictor" in d:
                from ..native import predict

                cls = getattr(predict, d.pop("predictor"))
                obj = cls(d.pop("signature"))
                state = d.pop("state", None)
                if state is not None:
                    obj.load_state(state)
                return st.native(obj, **d, **common)
            if "signature" in d:
                return st.native(d.pop("signature"), **d, **common)
            self.problems.append(f"{where}: a native step needs call, signature, predictor or template")
            return None
        if kind == "worker":
            module = d.pop("module", None)
            return st.worker(module, **d, **common)
        if kind == "op":
            return st.op(d.pop("op", None), **d, **common)
        if kind == "parallel":
            children = self.steps(d.pop("steps", None), f"{where}.steps")
            return st.parallel(children, **d, **common)
        if kind == "branch":
            cond = d.pop("condition", None)
            if isinstance(cond, Mapping):
                cond = self.resolve(cond.get("call"), f"{where} condition")
                if cond is None:
                    return None
            then = self.steps(d.pop("then", []), f"{where}.then")
            otherwise = self.steps(d.pop("otherwise", []), f"{where}.otherwise") or None
            return st.branch(cond, then, otherwise, **d, **common)
        if kind == "fan_out":
            inner = self.step(d.pop("step", None), f"{where}.step")
            if inner is None:
                return None
            return st.fan_out(inner, **d, **common)
        self.problems.append(
            f"{where}: unknown step type {kind!r} (native, worker, op, parallel, branch, fan_out)"
        )
        return None


def pipeline_from_dict(
    spec: Mapping[str, Any],
    *,
    allow: Sequence[str] = (),
    pools: Mapping[str, Any] | None = None,
    lm: Any = None,
    manager: Any = None,
) -> Pipeline:
    from .core import Pipeline

    if not isinstance(spec, Mapping) or "steps" not in spec:
        raise PipelineError("a saved pipeline is a mapping with 'steps'")
    version = spec.get("dspex_pipeline", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise PipelineError(f"saved pipeline format {version!r} is not supported (this dspex reads {FORMAT_VERSION})")
    loader = _Loader(allow)
    steps = loader.steps(spec["steps"], "steps")
    if loader.problems:
        raise PipelineError(loader.problems)
    return Pipeline(
        steps, name=str(spec.get("name", "pipeline")), inputs=spec.get("inputs"), pools=pools, lm=lm, manager=manager
    )


def load(
    path: str | Path,
    *,
    allow: Sequence[str] = (),
    pools: Mapping[str, Any] | None = None,
    lm: Any = None,
    manager: Any = None,
) -> Pipeline:
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    return pipeline_from_dict(data, allow=allow, pools=pools, lm=lm, manager=manager)


