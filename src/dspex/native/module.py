"""``dspex.Module``: a composite program, as DSPy 3.4.1's ``dspy.Module``.

    class MultiHop(dspex.Module):
        def __init__(self, search):
            super().__init__()
            self.search = search
            self.query = dspex.Predict("question -> query")
            self.answer = dspex.ChainOfThought("context: list[str], question -> answer")

        def forward(self, question):
            q = self.query(question=question).query
            return self.answer(context=self.search(q), question=question)

    prog = MultiHop(search)
    pred = prog(question="...")           # forward() through __call__; await prog.acall(...) -> aforward()
    pred.get_lm_usage(); pred.get_trace() # usage and trace of this call
    prog.save("prog.json")                # the JSON DSPy writes for the same program
    MultiHop(search).load("prog.json")    # DSPy's Module.load reads it too, and dspex reads DSPy's

Predictors are found as attributes, with DSPy's names: ``query``, ``answer.predict``
(a ChainOfThought's inner Predict), ``hops[0]``, ``tools['x']`` for lists and dicts,
sub-modules recursively (``named_predictors()``, ``named_sub_modules()``). A sub-module
marked ``_compiled = True`` is frozen, as in DSPy: its predictors are not parameters.

``native_reason(program)`` says why a program cannot run in-process (None when it can):
the router runs such a program whole in a DSPy worker instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import logging
import os
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigError
from .predict import TRACE, ChainOfThought, Predict, _inputs_of, arun_batch, run_batch
from .values import Prediction

__all__ = ["Module", "deepcopy_program", "named_parameters", "named_sub_modules", "native_reason"]

logger = logging.getLogger("dspex")
_CONTAINERS = (Predict, ChainOfThought)  # with Module: what named_sub_modules() walks into


def _is_module(x: Any) -> bool:
    return isinstance(x, (Module, ChainOfThought, Predict))


def named_parameters(root: Any) -> list[tuple[str, Predict]]:
    """DSPy's ``BaseModule.named_parameters``: every Predict once, by its first attribute path."""
    seen: set[int] = set()
    out: list[tuple[str, Predict]] = []

    def add(name: str, value: Any) -> None:
        if isinstance(value, Predict):
            if id(value) not in seen:
                seen.add(id(value))
                out.append((name, value))
        elif isinstance(value, (Module, ChainOfThought)) and not getattr(value, "_compiled", False):
            for sub, param in named_parameters(value):
                add(f"{name}.{sub}", param)

    if isinstance(root, Predict):
        add("self", root)
    for name, value in vars(root).items():
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item)
        elif isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}['{key}']", item)
        else:
            add(name, value)
    return out


def named_sub_modules(root: Any, type_: type | tuple[type, ...] | None = None,
                      skip_compiled: bool = False) -> Iterator[tuple[str, Any]]:
    """DSPy's ``named_sub_modules``: breadth first from ``("self", root)``, each object once."""
    want = type_ or (Module, *_CONTAINERS)
    queue: deque[tuple[str, Any]] = deque([("self", root)])
    seen = {id(root)}

    def push(name: str, item: Any) -> None:
        if id(item) not in seen:
            seen.add(id(item))
            queue.append((name, item))

    while queue:
        name, item = queue.popleft()
        if isinstance(item, want):
            yield name, item
        if _is_module(item):
            if skip_compiled and getattr(item, "_compiled", False):
                continue
            for sub, value in vars(item).items():
                push(f"{name}.{sub}", value)
        elif isinstance(item, (list, tuple)):
            for i, value in enumerate(item):
                push(f"{name}[{i}]", value)
        elif isinstance(item, dict):
            for key, value in item.items():
                push(f"{name}[{key}]", value)


def deepcopy_program(program: Any) -> Any:
    """A deep copy whose predictors have their own demos and signatures, sharing LMs,
    adapters and checks (clients and code, not learned state; copying an LM would drop its key)."""
    memo: dict[int, Any] = {}
    for _, p in named_parameters(program):
        for shared in (p.lm, p.adapter, p.check, p.signature):  # signatures are immutable values
            if shared is not None:
                memo[id(shared)] = shared
    try:
        return copy.deepcopy(program, memo)
    except Exception:  # an attribute that cannot be copied (a socket, a lock): as DSPy, copy what can be
        new = program.__class__.__new__(program.__class__)
        for attr, value in vars(program).items():
            if _is_module(value):
                setattr(new, attr, deepcopy_program(value))
                continue
            try:
                setattr(new, attr, copy.deepcopy(value, memo))
            except Exception:
                logger.warning("dspex: cannot deep-copy attribute %r of %s; sharing it", attr, type(program).__name__)
                setattr(new, attr, value)
        return new


class _Trace(list):  # type: ignore[type-arg,unused-ignore]
    """The running call's trace; also keeps each predictor call's own usage as it was when
    recorded (a Module's result Prediction gets the call's total, which must not count twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.usages: list[Any] = []

    def append(self, item: Any) -> None:
        super().append(item)
        self.usages.append(item[2].get_lm_usage())


@contextmanager
def _tracing() -> Iterator[tuple[list[Any], list[Any]]]:
    """Collect the predictor calls (and their usage) of one Module call; nested Modules
    share the outermost trace."""
    outer = TRACE.get()
    trace = outer if isinstance(outer, _Trace) else _Trace()
    start = len(trace)
    token = TRACE.set(trace) if outer is None else None
    calls: list[Any] = []
    usages: list[Any] = []
    try:
        yield calls, usages
    finally:
        if token is not None:
            TRACE.reset(token)
        calls.extend(trace[start:])
        usages.extend(trace.usages[start:])


def _merge_usage(usages: list[Any]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for usage in usages:
        for model, row in (usage or {}).items():
            acc = total.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
            for key in acc:
                acc[key] += int(row.get(key, 0))
    return total


class Module:
    """Base class of composite programs: predictors (and sub-modules) as attributes, a ``forward()``."""

    _compiled = False

    def __init__(self, callbacks: list[Any] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    # ------------------------------------------------------------------ calls
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    async def aforward(self, *args: Any, **kwargs: Any) -> Any:
        """Default: ``forward`` on a thread (the predictors' sync calls); override for real async."""
        ctx = contextvars.copy_context()
        return await asyncio.to_thread(ctx.run, self.forward, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _tracing() as (calls, usages):
            out = self.forward(*args, **kwargs)
        return self._finish(out, calls, usages)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        with _tracing() as (calls, usages):
            out = await self.aforward(*args, **kwargs)
        return self._finish(out, calls, usages)

    def batch(self, examples: Any, *, concurrency: int = 8, return_exceptions: bool = False) -> list[Any]:
        """``self(**inputs)`` per example (dicts or Examples with input keys), in input order,
        on ``concurrency`` threads; errors as ``Predict.batch``."""
        return run_batch(self.__call__, [_inputs_of(e) for e in examples], concurrency, return_exceptions)

    async def abatch(self, examples: Any, *, concurrency: int = 8, return_exceptions: bool = False) -> list[Any]:
        """The asyncio form of :meth:`batch` (``acall`` per example)."""
        return await arun_batch(self.acall, [_inputs_of(e) for e in examples], concurrency, return_exceptions)

    @staticmethod
    def _finish(out: Any, calls: list[Any], usages: list[Any]) -> Any:
        if isinstance(out, Prediction):  # usage of every LM call this program made, and what ran
            out.set_lm_usage(_merge_usage(usages))
            out.set_trace(calls)
        return out

    # ------------------------------------------------------------- structure
    def named_parameters(self) -> list[tuple[str, Predict]]:
        return named_parameters(self)

    def named_predictors(self) -> list[tuple[str, Predict]]:
        return named_parameters(self)

    def predictors(self) -> list[Predict]:
        return [p for _, p in named_parameters(self)]

    parameters = predictors

    def named_sub_modules(self, type_: type | tuple[type, ...] | None = None,
                          skip_compiled: bool = False) -> Iterator[tuple[str, Any]]:
        return named_sub_modules(self, type_, skip_compiled)

    def set_lm(self, lm: Any) -> None:
        for p in self.predictors():
            p.lm = lm

    def get_lm(self) -> Any:
        lms = {id(p.lm): p.lm for p in self.predictors()}
        if len(lms) > 1:
            raise ValueError(f"{type(self).__name__} uses several LMs; ask each predictor (named_predictors())")
        return next(iter(lms.values()), None)

    def deepcopy(self) -> Any:
        return deepcopy_program(self)

    def reset_copy(self) -> Any:
        new = deepcopy_program(self)
        new.reset()
        return new

    def reset(self) -> None:
        """Reset every predictor (demos and own LM), as DSPy's ``reset_copy`` does to its copy."""
        for p in self.predictors():
            p.reset()

    def __repr__(self) -> str:
        inner = "\n".join(f"  {name} = {p!r}" for name, p in named_parameters(self))
        return f"{type(self).__name__}(\n{inner}\n)" if inner else f"{type(self).__name__}()"

    # ---------------------------------------------------------- program state
    def dump_state(self) -> dict[str, Any]:
        """``{predictor name: Predict state}``: DSPy's ``Module.dump_state`` for the same program."""
        return {name: p.dump_state() for name, p in named_parameters(self)}

    def load_state(self, state: dict[str, Any], *, allow_unsafe_lm_state: bool = False) -> Module:
        params = named_parameters(self)
        missing = [name for name, _ in params if name not in state]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} state has no entry for predictor(s) {', '.join(missing)} "
                f"(the state holds: {', '.join(k for k in state if k != 'metadata') or 'nothing'}); "
                "was it saved from another program?"
            )
        for name, p in params:
            p.load_state(state[name], allow_unsafe_lm_state=allow_unsafe_lm_state)
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole program's state as DSPy's ``module.save("x.json")`` does."""
        from .state import write_state

        write_state(path, self.dump_state())

    def load(self, path: str | os.PathLike[str], *, allow_unsafe_lm_state: bool = False) -> Module:
        """Load a state written by dspex or DSPy into this program. Returns self."""
        from .state import read_state

        state = read_state(path)
        state.pop("metadata", None)
        return self.load_state(state, allow_unsafe_lm_state=allow_unsafe_lm_state)


def native_reason(program: Any) -> str | None:
    """None when every predictor of ``program`` runs natively, else why not (for the router)."""
    from ._types import native_capable

    params = named_parameters(program) if _is_module(program) else []
    if not params:
        return f"{type(program).__name__} has no dspex predictors (Predict / ChainOfThought attributes)"
    for name, value in vars(program).items():
        kind = type(value).__module__
        if kind == "dspy" or kind.startswith("dspy."):
            return f"attribute {name!r} is a DSPy object ({type(value).__qualname__}), which runs only in DSPy"
    for name, p in params:
        for fname, f in p.signature.fields.items():
            if not native_capable(f.annotation):
                return f"predictor {name!r}: field {fname!r} has type {f.type_name}, which the native adapters do not support"
        adapter = p.adapter
        if adapter is not None and type(adapter).__name__ not in ("ChatAdapter", "JSONAdapter"):
            return f"predictor {name!r} uses adapter {type(adapter).__name__}, which has no native implementation"
    for name, sub in named_sub_modules(program):
        if name != "self" and isinstance(sub, Module):
            why = native_reason(sub) if named_parameters(sub) else None
            if why is not None:
                return f"sub-module {name[5:]!r}: {why}"
    return None
