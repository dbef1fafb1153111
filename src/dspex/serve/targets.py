"""What an endpoint runs: a saved program, an imported object, a pool handler, a pipeline.

Every kind becomes a ``Target`` with the same surface: the input and output fields (for
the OpenAPI schema and the 422 checks), ``prepare()`` (start the pools it needs; the
service is ready when every target is prepared) and ``call(inputs, session, emit)``
returning ``(outputs, trace rows)``. ``emit`` receives what a streamed call sends as it
happens: pipeline events, ``Progress`` (a worker's ``ctx.progress``) and ``Chunk`` (a
streaming handler's chunks; ``emit`` then returns an awaitable, the SSE window); JSON
calls pass ``NO_EVENTS``. Everything runs on the server's event loop; sync callables run
on a thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .config import EndpointConfig

__all__ = ["NO_EVENTS", "Chunk", "FieldInfo", "OutputMismatch", "Progress", "Target", "build_target"]

Emit = Callable[[Any], Any]  # returns None, or an awaitable for a Chunk (flow control)
TraceRows = list[dict[str, Any]]


def NO_EVENTS(event: Any) -> None:
    """The ``emit`` of a JSON call: nothing streams, events are dropped."""


@dataclass(frozen=True)
class Chunk:
    """One chunk a streaming handler yielded (SSE ``chunk``)."""

    index: int
    value: Any


@dataclass(frozen=True)
class Progress:
    """A worker's ``ctx.progress(...)`` event (SSE ``progress``)."""

    data: dict[str, Any]


class OutputMismatch(Exception):
    """A code-defined program returned a value that does not fit its signature's output type."""


@dataclass(frozen=True)
class FieldInfo:
    name: str
    annotation: Any = None
    desc: str = ""


def _fields(sig_fields: Mapping[str, Any]) -> dict[str, FieldInfo]:
    return {n: FieldInfo(n, f.annotation, getattr(f, "desc", "") or "") for n, f in sig_fields.items()}


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _row(step: str, kind: str, where: str, pid: int | None, seconds: float, usage: Any = None) -> dict[str, Any]:
    tokens = 0
    if isinstance(usage, Mapping):  # {model: {prompt_tokens, completion_tokens}} or flat
        for v in usage.values():
            if isinstance(v, Mapping):
                tokens += int(v.get("prompt_tokens", 0) or 0) + int(v.get("completion_tokens", 0) or 0)
        tokens += int(usage.get("prompt_tokens", 0) or 0) + int(usage.get("completion_tokens", 0) or 0)
    return {"step": step, "kind": kind, "where": where, "pid": pid, "ms": round(seconds * 1000, 2),
            "retries": 0, "status": "ok", "tokens": tokens}


def _as_outputs(value: Any, outputs: Mapping[str, FieldInfo]) -> dict[str, Any]:
    """A program's return value as {field: value}."""
    if hasattr(value, "toDict") and callable(value.toDict):  # dspy.Prediction
        value = value.toDict()
    if isinstance(value, Mapping):
        data = dict(value)
        if outputs and not any(k in data for k in outputs) and len(outputs) == 1:
            return {next(iter(outputs)): data}
        return data
    if len(outputs) == 1:
        return {next(iter(outputs)): value}
    return {"output": value}


class Target:
    """One endpoint's program. Subclasses set the fields and implement ``call``."""

    kind = "program"
    group = "programs"
    loose_outputs = False  # True for code-defined programs: see check_outputs

    def __init__(self, cfg: EndpointConfig, inputs: dict[str, FieldInfo], outputs: dict[str, FieldInfo],
                 signature_text: str, required: list[str] | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.description = cfg.description
        self.inputs = inputs
        self.outputs = outputs
        self.signature_text = signature_text
        self.required = required if required is not None else [
            n for n, f in inputs.items() if not _optional(f.annotation)]
        self.timeout_s = cfg.timeout_s

    @property
    def path(self) -> str:
        return f"/v1/{self.group}/{self.name}"

    def describe(self) -> dict[str, Any]:
        """The endpoint for the page and ``/v1/endpoints``."""
        from .schema import field_schema

        def fields(fs: Mapping[str, FieldInfo]) -> list[dict[str, Any]]:
            return [{"name": f.name, "schema": field_schema(f.annotation), "desc": f.desc,
                     "required": f.name in self.required} for f in fs.values()]

        return {"name": self.name, "kind": self.kind, "group": self.group, "path": self.path,
                "signature": self.signature_text, "description": self.description,
                "inputs": fields(self.inputs), "outputs": fields(self.outputs)}

    def check_outputs(self, outputs: dict[str, Any]) -> None:
        """Code-defined programs (handlers, objects) promise their typed output fields by the
        signature; a value of another type is their bug, reported (502) instead of sent."""
        if not self.loose_outputs:
            return
        from .validation import check_value

        for name, f in self.outputs.items():
            if f.annotation is not str and name in outputs:
                problem, _ = check_value(f.annotation, outputs[name], name)
                if problem is not None:
                    raise OutputMismatch(f"program {self.name!r} returned a bad {name!r}: {problem}")

    async def prepare(self) -> None:
        """Start what the first call would otherwise start (pools)."""

    async def call(self, inputs: dict[str, Any], session: str | None, emit: Emit) -> tuple[dict[str, Any], TraceRows]:
        raise NotImplementedError


class _Context:
    """Runs a call under the service's LM (``dspex.context(lm=...)``), when it has one."""

    def __init__(self, lm: Any):
        self.lm = lm

    def run(self, fn: Callable[[], Any]) -> Any:
        if self.lm is None:
            return fn()
        from ..settings import context

        with context(lm=self.lm):
            return fn()

    async def arun(self, coro_fn: Callable[[], Any]) -> Any:
        if self.lm is None:
            return await coro_fn()
        from ..settings import context

        with context(lm=self.lm):
            return await coro_fn()


async def _call_object(obj: Any, inputs: dict[str, Any], ctx: _Context) -> Any:
    acall = getattr(obj, "acall", None) or getattr(obj, "aforward", None)
    if acall is not None and inspect.iscoroutinefunction(acall):
        return await ctx.arun(lambda: acall(**inputs))
    if inspect.iscoroutinefunction(obj):
        return await ctx.arun(lambda: obj(**inputs))
    # A sync program runs on a thread; a disconnect stops waiting for it, not the thread.
    cv = contextvars.copy_context()
    return await asyncio.to_thread(cv.run, ctx.run, lambda: obj(**inputs))


class NativeProgram(Target):
    """A native Predict / ChainOfThought, optionally with saved program state."""

    def __init__(self, cfg: EndpointConfig, lm: Any):
        from .. import ChainOfThought, Predict

        cls = ChainOfThought if cfg.module == "ChainOfThought" else Predict
        try:
            program = cls(cfg.signature)
            if cfg.state:
                program.load(cfg.state)
        except FileNotFoundError:
            raise ConfigError(f"program {cfg.name!r}: state file {cfg.state!r} does not exist") from None
        self.program = program
        self.ctx = _Context(lm)  # the LM goes straight to acall(lm=): no context switch per call
        sig = program.signature
        super().__init__(cfg, _fields(sig.input_fields), _fields(sig.output_fields), sig.to_string(types=True))
        self.kind = f"native {cfg.module}"

    async def call(self, inputs: dict[str, Any], session: str | None, emit: Emit) -> tuple[dict[str, Any], TraceRows]:
        t0 = time.perf_counter()
        lm = self.ctx.lm
        pred = await (self.program.acall(**inputs, lm=lm) if lm is not None else self.program.acall(**inputs))
        usage = pred.get_lm_usage() if hasattr(pred, "get_lm_usage") else None
        row = _row(self.name, "native", "native", os.getpid(), time.perf_counter() - t0, usage)
        return _as_outputs(pred, self.outputs), [row]


class _PoolTarget(Target):
    """Shared by the targets that call a pool (started in ``prepare``)."""

    def __init__(self, *args: Any, manager: Any, pool_name: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.manager = manager
        self.pool_name = pool_name
        self.pool: Any = None

    async def prepare(self) -> None:
        self.pool = await asyncio.to_thread(self.manager.get, self.pool_name)

    async def _pool_call(self, handler: str, session: str | None, kwargs: dict[str, Any],
                         emit: Emit = NO_EVENTS) -> tuple[Any, TraceRows]:
        if self.pool is None:
            await self.prepare()
        on_event = None if emit is NO_EVENTS else (lambda data: emit(Progress(dict(data))))
        t0 = time.perf_counter()
        res = await self.pool.acall_detailed(handler, session=session, timeout=self.timeout_s, on_event=on_event,
                                             **kwargs)
        usage = res.value.get("usage") if isinstance(res.value, dict) else None
        return res.value, [_row(self.name, "worker", self.pool_name, res.pid, time.perf_counter() - t0, usage)]

    async def _pool_stream(self, handler: str, session: str | None, kwargs: dict[str, Any],
                           emit: Emit) -> tuple[list[Any], TraceRows]:
        """A generator handler's chunks, each emitted as it arrives; leaving early cancels the call."""
        if self.pool is None:
            await self.prepare()
        t0 = time.perf_counter()
        chunks: list[Any] = []
        stream = self.pool.astream(handler, session=session, timeout=self.timeout_s,
                                   on_event=lambda data: emit(Progress(dict(data))), **kwargs)
        try:
            async for chunk in stream:
                pending = emit(Chunk(len(chunks), chunk))
                if inspect.isawaitable(pending):  # the SSE side's window is full: wait for the client
                    await pending
                chunks.append(chunk)
        finally:
            await stream.aclose()
        return chunks, [_row(self.name, "worker", self.pool_name, None, time.perf_counter() - t0)]


class WorkerProgram(_PoolTarget):
    """A saved program run by the real DSPy in a worker, through the router's dispatcher.

    The request is the one ``dspex.predict(..., impl="dspy")`` sends (same payload, same
    secret filter, same error mapping), so an endpoint and the API cannot drift."""

    def __init__(self, cfg: EndpointConfig, lm: Any, manager: Any):
        from .. import signature
        from ..router import decide

        sig = signature(cfg.signature)
        state = None
        if cfg.state:
            from ..native.state import read_state

            try:
                state = read_state(cfg.state)
            except FileNotFoundError:
                raise ConfigError(f"program {cfg.name!r}: state file {cfg.state!r} does not exist") from None
        self.sig = sig
        self.lm = lm
        self.options: dict[str, Any] = {"state": state} if state else {}
        op = "chain_of_thought" if cfg.module == "ChainOfThought" else "predict"
        self.decision = decide(op, sig, impl="dspy", form="call")  # one dspy.run per request
        super().__init__(cfg, _fields(sig.input_fields), _fields(sig.output_fields), sig.to_string(types=True),
                         manager=manager, pool_name=cfg.pool or "dspy")
        self.kind = f"dspy {cfg.module}"

    async def call(self, inputs: dict[str, Any], session: str | None, emit: Emit) -> tuple[dict[str, Any], TraceRows]:
        from ..router.dispatch import CallInfo, arun_module

        if self.pool is None:
            await self.prepare()
        on_event = None if emit is NO_EVENTS else (lambda data: emit(Progress(dict(data))))
        info = CallInfo()
        t0 = time.perf_counter()
        pred = await arun_module(self.decision, self.sig, inputs, lm=self.lm, options=self.options, pool=self.pool,
                                 session=session, on_event=on_event, timeout=self.timeout_s, info=info)
        usage = pred.get_lm_usage() if hasattr(pred, "get_lm_usage") else None
        row = _row(self.name, "worker", self.pool_name, info.pid, time.perf_counter() - t0, usage)
        return _as_outputs(pred, self.outputs), [row]


_POOL_OPTIONS = frozenset({"session", "timeout", "callbacks", "on_event"})


class HandlerProgram(_PoolTarget):
    """A pool handler called with the inputs as keyword arguments."""

    def __init__(self, cfg: EndpointConfig, manager: Any):
        from .. import signature

        sig = signature(cfg.signature)
        clash = sorted(set(sig.input_fields) & _POOL_OPTIONS)
        if clash:  # the inputs travel as keyword arguments of Pool.acall, next to its own options
            raise ConfigError(f"handler program {cfg.name!r}: input field(s) {clash} are named like pool call "
                              f"options {sorted(_POOL_OPTIONS)}; rename them in the signature and the handler")
        super().__init__(cfg, _fields(sig.input_fields), _fields(sig.output_fields), sig.to_string(types=True),
                         manager=manager, pool_name=cfg.pool or "dspy")
        self.kind = "handler"
        self.loose_outputs = True

    async def call(self, inputs: dict[str, Any], session: str | None, emit: Emit) -> tuple[dict[str, Any], TraceRows]:
        if self.cfg.stream and emit is not NO_EVENTS:
            chunks, rows = await self._pool_stream(str(self.cfg.handler), session, inputs, emit)
            return _as_outputs(chunks, self.outputs), rows
        value, rows = await self._pool_call(str(self.cfg.handler), session, inputs, emit)
        return _as_outputs(value, self.outputs), rows


def import_object(ref: str) -> Any:
    """``"package.module:attr.sub"`` -> the object (the working directory is importable)."""
    module_name, _, qual = ref.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for {ref!r}: {exc}; check the module path") from None
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {qual!r} (from {ref!r})") from None
    return obj


class ObjectProgram(Target):
    """Any imported callable, predictor or composite module ("pkg.mod:attr")."""

    def __init__(self, cfg: EndpointConfig, lm: Any):
        obj = import_object(str(cfg.object))
        if inspect.isclass(obj):
            obj = obj()  # a Module class: served as one instance
        if not callable(obj) and not hasattr(obj, "acall"):
            raise ConfigError(f"program {cfg.name!r}: {cfg.object!r} is not callable")
        self.obj = obj
        self.ctx = _Context(lm)
        sig_spec = cfg.signature or getattr(obj, "signature", None)
        if sig_spec is not None:
            from .. import signature

            sig = signature(sig_spec)
            super().__init__(cfg, _fields(sig.input_fields), _fields(sig.output_fields), sig.to_string(types=True))
        else:
            inputs, required = _params_of(obj)
            super().__init__(cfg, inputs, {}, ", ".join(inputs) + " -> ...", required)
        self.kind = "object"
        self.loose_outputs = True

    async def call(self, inputs: dict[str, Any], session: str | None, emit: Emit) -> tuple[dict[str, Any], TraceRows]:
        t0 = time.perf_counter()
        value = await _call_object(self.obj, inputs, self.ctx)
        usage = value.get_lm_usage() if hasattr(value, "get_lm_usage") else None
        rows = [_row(self.name, "native", "native", os.getpid(), time.perf_counter() - t0, usage)]
        return _as_outputs(value, self.outputs), rows + self._predictor_rows(value)

    def _predictor_rows(self, value: Any) -> TraceRows:
        """One row per predictor call of a ``dspex.Module`` (its prediction's trace)."""
        get_trace = getattr(value, "get_trace", None)
        calls = get_trace() if callable(get_trace) else None
        if not calls:
            return []
        named = getattr(self.obj, "named_predictors", None)
        names = {id(p): n for n, p in named()} if callable(named) else {}
        rows = []
        for predictor, _inputs, pred in calls:
            usage = pred.get_lm_usage() if hasattr(pred, "get_lm_usage") else None
            row = _row(f"{self.name}/{names.get(id(predictor), type(predictor).__name__)}", "predictor", "native",
                       os.getpid(), 0.0, usage)
            row["ms"] = None  # the module's trace does not time each predictor
            rows.append(row)
        return rows


def _params_of(obj: Any) -> tuple[dict[str, FieldInfo], list[str]]:
    """Input fields from the parameters of ``forward`` / ``__call__`` (no signature given)."""
    fn = getattr(obj, "forward", None) or obj
    try:
        params = inspect.signature(fn).parameters
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        raise ConfigError("cannot read the program's parameters; give it signature = \"in -> out\"") from None
    inputs: dict[str, FieldInfo] = {}
    required: list[str] = []
    for p in params.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        inputs[p.name] = FieldInfo(p.name, hints.get(p.name))
        if p.default is p.empty:
            required.append(p.name)
    return inputs, required


class PipelineTarget(Target):
    """A pipeline loaded from YAML/JSON (``Pipeline.save``); events go to ``emit``."""

    kind = "pipeline"
    group = "pipelines"

    def __init__(self, cfg: EndpointConfig, lm: Any, manager: Any):
        from ..pipeline import Pipeline
        from ..pipeline.validation import validate

        if not cfg.path or not os.path.isfile(cfg.path):
            raise ConfigError(f"pipeline {cfg.name!r}: file {cfg.path!r} does not exist")
        pipe = Pipeline.load(cfg.path, allow=list(cfg.allow), lm=lm, manager=manager)
        v = pipe.validate()
        declared = pipe.inputs if pipe.inputs is not None else v.required
        # a saved pipeline keeps its input names; the types come from the steps that read them
        readers = validate(pipe, None).required
        inputs = {n: FieldInfo(n, tp if tp is not None else readers.get(n)) for n, tp in declared.items()}
        writes: dict[str, FieldInfo] = {}
        for _, step in pipe.walk():
            for w in step.writes:
                writes.setdefault(w, FieldInfo(w))
        self.pipe = pipe
        refs = (getattr(s, "pool", None) for _, s in pipe.walk())
        self.pools = sorted({r for r in refs if isinstance(r, str)})
        self.manager = manager
        super().__init__(cfg, inputs, {k: v for k, v in writes.items() if k not in inputs},
                         f"{', '.join(inputs)} -> {', '.join(w for w in writes if w not in inputs)}")

    async def prepare(self) -> None:
        for name in self.pools:
            await asyncio.to_thread(self.manager.get, name)

    async def call(self, inputs: dict[str, Any], session: str | None, emit: Emit) -> tuple[dict[str, Any], TraceRows]:
        result = await self.pipe.arun(inputs, session=session, on_event=emit)
        out = {k: v for k, v in result.items() if k not in inputs}
        return out, result.trace.rows()


def build_target(cfg: EndpointConfig, *, lm: Any, manager: Any) -> Target:
    if cfg.kind == "pipeline":
        return PipelineTarget(cfg, lm, manager)
    if cfg.kind == "object":
        return ObjectProgram(cfg, lm)
    if cfg.kind == "handler":
        return HandlerProgram(cfg, manager)
    if cfg.impl == "dspy":
        return WorkerProgram(cfg, lm, manager)
    return NativeProgram(cfg, lm)
