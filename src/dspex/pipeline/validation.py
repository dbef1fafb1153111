"""Checking a pipeline's wiring before anything runs; every problem is reported at once.

What is checked:
  - every field a step reads is an input of the run or written by an earlier step
    (a field written by only one arm of a branch does not count);
  - types, where both the producer's and the consumer's are known (annotations of
    native callables, explicit non-str signature types);
  - parallel groups: two steps writing the same field (unless ``into=`` is used);
  - step names unique among siblings;
  - fan_out: ``over`` exists and can be a list, the element's field (``item``) is known;
  - fallback: it writes at least what its step writes;
  - worker steps: the pool exists (``Pipeline(pools=...)`` or the PoolManager's config);
    the handler exists: asked of a started Pool object (``stats()["handlers"]``), otherwise
    found statically by parsing the pool's handler modules (``@handler`` decorators;
    nothing is imported, as those modules may need packages only workers have). A
    module that cannot be found or parsed leaves its pool's handlers unchecked;
  - handler steps do not read fields named like the pool's own call options.
"""

from __future__ import annotations

import ast
import importlib.util
import types
import typing
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..wire import H
from .steps import Branch, FanOut, NativeStep, Parallel, Step, WorkerStep

if TYPE_CHECKING:
    from .core import Pipeline

__all__ = ["Validation", "compatible", "handlers_in_module", "validate"]

_POOL_CALL_OPTIONS = frozenset({"session", "timeout", "callbacks", "on_event"})
_ANY = (typing.Any, object)


class Validation:
    """The result of checking a pipeline: ``problems`` and the ``required`` inputs."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.required: dict[str, Any] = {}  # input field -> consumer type (None unknown)

    def add(self, problem: str) -> None:
        if problem not in self.problems:
            self.problems.append(problem)


def _tname(tp: Any) -> str:
    if tp is None:
        return "?"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def compatible(producer: Any, consumer: Any) -> bool:
    """Can a value typed ``producer`` feed a field typed ``consumer``? Unknown (None) is
    compatible with everything (signature ``str`` fields count as unknown: DSPy formats
    any value for them)."""
    if producer is None or consumer is None or consumer in _ANY or producer in _ANY:
        return True
    if producer == consumer:
        return True
    c_origin, p_origin = typing.get_origin(consumer), typing.get_origin(producer)
    if c_origin in (typing.Union, types.UnionType):
        return any(compatible(producer, c) for c in typing.get_args(consumer))
    if p_origin in (typing.Union, types.UnionType):
        return all(compatible(p, consumer) for p in typing.get_args(producer) if p is not type(None))
    if c_origin is typing.Literal or p_origin is typing.Literal:
        if p_origin is typing.Literal and c_origin is not typing.Literal:
            return all(compatible(type(v), consumer) for v in typing.get_args(producer))
        return True
    c_base = c_origin or consumer
    p_base = p_origin or producer
    if c_base is float and p_base is int:
        return True
    if isinstance(c_base, type) and isinstance(p_base, type):
        if not issubclass(p_base, c_base):
            return False
        c_args, p_args = typing.get_args(consumer), typing.get_args(producer)
        if c_args and p_args and len(c_args) == len(p_args):
            return all(compatible(p, c) for p, c in zip(p_args, c_args, strict=True))
        return True
    return True


@lru_cache(maxsize=64)
def _static_name(node: ast.expr) -> str | None:
    """A handler name written as a literal, or as ``H.<NAME>`` (the wire contract's names)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "H":
        value = getattr(H, node.attr, None)
        return value if isinstance(value, str) else None
    return None


def handlers_in_module(module: str) -> frozenset[str] | None:
    """Handler names a module defines, read from its source without importing it.

    None when the module cannot be found or uses forms this parser does not follow
    (then the handlers of its pool are not checked)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(spec.origin).read_text())
    except (OSError, SyntaxError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            target = deco.func if isinstance(deco, ast.Call) else deco
            dname = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            if dname != "handler":
                continue
            hname: Any = node.name
            if isinstance(deco, ast.Call):
                args = [a for a in deco.args]
                kw = {k.arg: k.value for k in deco.keywords}
                given = args[0] if args else kw.get("name")
                if given is not None:
                    hname = _static_name(given)
                    if hname is None:
                        return None  # computed name: cannot tell statically
            names.add(hname)
    return frozenset(names)


def _pool_handlers(pipeline: Pipeline, pool_ref: Any, config_pools: Mapping[str, Any]) -> frozenset[str] | None:
    pool = pool_ref if not isinstance(pool_ref, str) else pipeline.pools.get(pool_ref)
    if pool is not None:
        if getattr(pool, "_state", None) == "running":  # a started pool knows its handlers
            try:
                names = pool.stats().get("handlers")
                if names:
                    return frozenset(names)
            except Exception:
                pass
        modules = getattr(pool, "handlers", None)
    else:
        modules = (config_pools.get(pool_ref) or {}).get("handlers")
    if not modules or isinstance(modules, str):
        modules = [modules] if isinstance(modules, str) else []
    found: set[str] = set()
    for m in modules:
        if not isinstance(m, str):
            return None
        names = handlers_in_module(m)
        if names is None:
            return None
        found |= names
    return frozenset(found) if modules else None


class _Checker:
    def __init__(self, pipeline: Pipeline, v: Validation, inputs: Mapping[str, Any] | None):
        self.pipeline = pipeline
        self.v = v
        self.inputs_known = inputs is not None
        self._config_pools: Mapping[str, Any] | None = None

    def config_pools(self) -> Mapping[str, Any]:
        """{pool name: its config table} from the pipeline's PoolManager (or the default)."""
        if self._config_pools is None:
            pools: dict[str, Any] = {}
            manager = self.pipeline.manager
            if manager is None:
                from ..pool import manager as default_manager

                manager = default_manager()
            for name in manager.names():
                try:
                    pools[name] = manager.config(name)
                except Exception:
                    pools[name] = {}
            self._config_pools = pools
        return self._config_pools

    # avail: field -> type (None unknown); maybe: fields written on one branch arm only
    def seq(self, steps: list[Step], avail: dict[str, Any], maybe: dict[str, str], where: str) -> None:
        self.unique(steps, where or "the pipeline")
        for s in steps:
            self.step(s, avail, maybe, where)
            for k in s.writes:
                avail[k] = s.write_types.get(k)
                maybe.pop(k, None)
            if isinstance(s, Branch):
                for k in s.maybe_writes:
                    if k not in avail:
                        maybe[k] = s.name

    def unique(self, steps: Iterable[Step], where: str) -> None:
        seen: set[str] = set()
        for s in steps:
            if s.name in seen:
                self.v.add(f"two steps in {where} are named {s.name!r}; give them distinct name=")
            seen.add(s.name)

    def reads(self, s: Step, path: str, avail: dict[str, Any], maybe: dict[str, str]) -> None:
        for field in s.reads:
            want = s.read_types.get(field)
            if field in avail:
                have = avail[field]
                if not compatible(have, want):
                    self.v.add(
                        f"step {path!r} reads {field!r} as {_tname(want)} but it is written as {_tname(have)}"
                    )
            elif field in maybe:
                self.v.add(
                    f"step {path!r} reads {field!r}, which only one arm of branch {maybe[field]!r} writes; "
                    "write it in both arms (or give the branch an otherwise= that does)"
                )
            elif self.inputs_known:
                self.v.add(
                    f"step {path!r} reads {field!r} but no input or earlier step provides it "
                    f"(available: {sorted(avail) or 'nothing'})"
                )
            else:
                self.v.required.setdefault(field, want)
                avail[field] = want

    def step(self, s: Step, avail: dict[str, Any], maybe: dict[str, str], parent: str) -> None:
        path = f"{parent}/{s.name}" if parent else s.name
        if isinstance(s, Parallel):
            self.unique(s.steps, f"parallel {path!r}")
            writers: dict[str, list[str]] = {}
            for child in s.steps:
                self.step(child, dict(avail), dict(maybe), path)
                for k in child.writes:
                    writers.setdefault(k, []).append(child.name)
            if s.into is None:
                for k, names in writers.items():
                    if len(names) > 1:
                        self.v.add(
                            f"parallel {path!r}: steps {names} all write {k!r}; rename the outputs "
                            "(writes=...) or use parallel(..., into='field') to key results by step"
                        )
            if s.concurrency is not None and s.concurrency < 1:
                self.v.add(f"parallel {path!r}: concurrency must be >= 1")
            for field, want in s.read_types.items():  # lift children's input requirements
                if field not in avail and not self.inputs_known:
                    self.v.required.setdefault(field, want)
        elif isinstance(s, Branch):
            cond_step = _Reads(s.name, s.condition_reads)
            self.reads(cond_step, path, avail, maybe)
            for arm in (s.then, s.otherwise):
                a, m = dict(avail), dict(maybe)
                self.seq(arm, a, m, path)
                for field, want in a.items():
                    if field not in avail and field in self.v.required:
                        avail.setdefault(field, want)
        elif isinstance(s, FanOut):
            self.reads(_Reads(s.name, (s.over,), {s.over: None}), path, avail, maybe)
            over_t = avail.get(s.over)
            elem_t = None
            if over_t is not None:
                origin = typing.get_origin(over_t) or over_t
                if isinstance(origin, type) and not issubclass(origin, list | tuple):
                    self.v.add(f"fan_out {path!r} maps over {s.over!r}, which is {_tname(over_t)}, not a list")
                args = typing.get_args(over_t)
                elem_t = args[0] if args else None
            if s.item is None:
                self.v.add(
                    f"fan_out {path!r}: step {s.step.name!r} reads {list(s.step.reads)}; say which field "
                    "gets each element with item="
                )
            inner = dict(avail)
            if s.item is not None:
                inner[s.item] = elem_t
            self.step(s.step, inner, dict(maybe), path)
            for field in s.step.reads:
                if field != s.item and field not in avail and field in self.v.required:
                    avail.setdefault(field, self.v.required[field])
        else:
            self.reads(s, path, avail, maybe)
            if isinstance(s, WorkerStep):
                self.worker(s, path)
            if isinstance(s, NativeStep) and s.mode == "callable" and not s.writes:
                self.v.add(f"step {path!r} writes nothing; declare writes=")
        if s.fallback is not None:
            fb = s.fallback
            missing = [w for w in s.writes if w not in fb.writes]
            if missing:
                self.v.add(
                    f"fallback {fb.name!r} of step {path!r} does not write {missing}; a fallback must "
                    "write what its step writes"
                )
            self.step(fb, dict(avail), dict(maybe), parent)

    def worker(self, s: WorkerStep, path: str) -> None:
        ref = s.pool
        if isinstance(ref, str) and ref not in self.pipeline.pools and ref not in self.config_pools():
            known = sorted(set(self.pipeline.pools) | set(self.config_pools()))
            self.v.add(
                f"step {path!r} uses pool {ref!r}, which is not configured (known pools: {known}); "
                "add [pools." + ref + "] to dspex.toml or pass Pipeline(pools={...})"
            )
            return
        handlers = _pool_handlers(self.pipeline, ref, self.config_pools())
        if handlers is not None and s.handler not in handlers:
            self.v.add(
                f"step {path!r} calls handler {s.handler!r}, which pool {s.pool_name()!r} does not have "
                f"(it has: {sorted(handlers)})"
            )
        if s.module is None:
            clash = sorted(set(s.reads) & _POOL_CALL_OPTIONS)
            if clash:
                self.v.add(
                    f"step {path!r} reads {clash}, names the pool uses for its own call options; "
                    "rename those fields"
                )


class _Reads(Step):
    """A pseudo step that only reads (a branch condition, a fan_out's list)."""

    def __init__(self, name: str, reads: Iterable[str], types_: Mapping[str, Any] | None = None):
        super().__init__(name=name, reads=list(reads), read_types=types_ or {})


def validate(pipeline: Pipeline, inputs: Mapping[str, Any] | None = None) -> Validation:
    """Check ``pipeline``; ``inputs`` maps the run's input fields to their types (None
    unknown), or is None when the inputs are not known yet (then ``required`` lists them)."""
    v = Validation()
    checker = _Checker(pipeline, v, inputs)
    avail = dict(inputs or {})
    checker.seq(list(pipeline.steps), avail, {}, "")
    return v
