"""Native steps: a callable, a native module, a Template or a signature string, run in
the caller's process (``native()``)."""

from __future__ import annotations

import inspect
import threading
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from ..errors import PipelineError
from ..router import track
from ..router.payload import native_module
from .base import Step, StepOptions, _field_names, _parse_signature, _reads_spec, _sig_io, _sig_string

if TYPE_CHECKING:
    from .runner import RunState
    from .trace import StepTrace

__all__ = ["NativeStep", "native"]


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
                kwargs: dict[str, Any] = {}
                if self.instructions is not None:
                    kwargs["instructions"] = self.instructions
                if self.demos is not None:
                    kwargs["demos"] = self.demos
                # the router's native factory: the same module dspex.predict builds natively
                self._predictor = native_module(self.op(), self.signature, None, None, kwargs)
            return self._predictor

    def op(self) -> str:
        """The router op of a signature step (its module)."""
        ops = {"Predict": "predict", "ChainOfThought": "chain_of_thought"}
        if self.module_name not in ops:
            raise PipelineError(
                f"step {self.name!r}: unknown native module {self.module_name!r}; use 'Predict' or 'ChainOfThought'"
            )
        return ops[self.module_name]

    async def _execute(self, data: Mapping[str, Any], rt: RunState, st: StepTrace) -> dict[str, Any]:
        inputs = self.inputs_of(data)
        lm = self.lm if self.lm is not None else rt.lm
        if self.mode == "template":
            return self._outputs(self.target.render(**inputs))
        target = self._get_predictor()
        acall = getattr(target, "acall", None) if self.mode in ("signature", "module") else None
        if acall is not None and inspect.iscoroutinefunction(acall) and self.mode == "signature":
            with track(self.op(), "native"):  # counted like the same op through the API
                result = await rt.in_context(acall(**inputs), lm, st)
        elif acall is not None and inspect.iscoroutinefunction(acall):
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
    **options: Unpack[StepOptions],
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
        **options,
    )
