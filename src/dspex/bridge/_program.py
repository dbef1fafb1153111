"""A user's composite program (``dspex.Module``) rebuilt as a ``dspy.Module`` in a worker.

The host ships the program by value (cloudpickle; see ``dspex.api._module``). Here it is
unpickled and turned into an instance of a class derived from both ``dspy.Module`` and
the user's class, with the same attributes except that every dspex predictor is replaced
by its DSPy counterpart: ``Predict`` -> ``dspy.Predict``, ``ChainOfThought`` ->
``dspy.ChainOfThought``, with the same signature (fields, types, descriptions, prefixes,
defaults, constraints), instructions, demos and config. The user's own ``forward()`` then
runs inside DSPy, so optimizers see real DSPy predictors (traces, demos, named_predictors
with the same names) and the state they return loads natively into the same class.

``dspy.program`` runs such a program once (the router's "whole program in a worker").
"""

from __future__ import annotations

import hashlib
from typing import Any

import dspy

from ..native._memo import Memo
from ..native.module import Module
from ..native.predict import ChainOfThought, Predict
from ..native.signature import Signature, default_instructions
from ..native.values import Prediction
from ..pool.handler import Context, handler
from ..wire import H
from ._lm import build_lm

__all__ = ["dspy_signature", "rebuild", "to_dspy"]

_SHELLS: Memo[type] = Memo(256)  # user class -> its dspy.Module shell class
_PROGRAMS: Memo[Any] = Memo(32)  # pickle digest -> rebuilt program


def dspy_signature(sig: Signature) -> Any:
    """The dspy.Signature for a native one, field by field (types travel as the objects themselves)."""
    fields: dict[str, Any] = {}
    for name, f in sig.fields.items():
        kw: dict[str, Any] = {}
        if not f.has_default_desc:
            kw["desc"] = f.desc
        for key, value in f.extra or ():
            kw[key] = value
        maker = dspy.InputField if f.is_input else dspy.OutputField
        fields[name] = (f.annotation, maker(**kw))
    default = sig.instructions == default_instructions(sig.input_fields, sig.output_fields)
    out = dspy.Signature(fields, None if default else sig.instructions)
    for name, f in sig.fields.items():  # prefixes only where they differ (DSPy warns on prefix=)
        if out.fields[name].json_schema_extra.get("prefix") != f.prefix:
            out = out.with_updated_fields(name, prefix=f.prefix)
    return out


def _strip_lm(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "lm": None}


def _predictor(p: Predict) -> Any:
    mod = dspy.Predict(dspy_signature(p.signature), **p.config)
    mod.load_state(_strip_lm(p.dump_state()))
    if p.lm is not None and callable(getattr(p.lm, "to_spec", None)):
        mod.lm = build_lm(p.lm.to_spec())
    return mod


def _cot(c: ChainOfThought) -> Any:
    base = c.signature.delete("reasoning") if "reasoning" in c.signature.output_fields else c.signature
    mod = dspy.ChainOfThought(dspy_signature(base), **c.predict.config)
    mod.predict.load_state(_strip_lm(c.predict.dump_state()))
    if c.predict.lm is not None and callable(getattr(c.predict.lm, "to_spec", None)):
        mod.predict.lm = build_lm(c.predict.lm.to_spec())
    return mod


def _shell_class(cls: type[Module]) -> type:
    """``class <Name>(dspy.Module, <user class>)`` with the user's forward/aforward first."""
    def build() -> type:
        ns: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        user_forward, user_aforward = cls.forward, cls.aforward

        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            return _dspy_prediction(user_forward(self, *args, **kwargs))

        ns["forward"] = forward
        if user_aforward is not Module.aforward:
            async def aforward(self: Any, *args: Any, **kwargs: Any) -> Any:
                return _dspy_prediction(await user_aforward(self, *args, **kwargs))

            ns["aforward"] = aforward
        return type(cls.__name__, (dspy.Module, cls), ns)

    key: Any = cls  # classes hash by identity
    return _SHELLS.get(key, build)


def _dspy_prediction(out: Any) -> Any:
    """A dspex Prediction built in forward() as a dspy.Prediction (what optimizers expect)."""
    if isinstance(out, Prediction) and not isinstance(out, dspy.Prediction):
        return dspy.Prediction(**dict(out.items()))
    return out


def _convert(value: Any, seen: dict[int, Any]) -> Any:
    """The DSPy counterpart of ``value``; an object met twice (an alias) converts once."""
    if isinstance(value, (Predict, ChainOfThought, Module)):
        done = seen.get(id(value))
        if done is None:
            done = seen[id(value)] = (_predictor(value) if isinstance(value, Predict)
                                      else _cot(value) if isinstance(value, ChainOfThought)
                                      else to_dspy(value, seen))
        return done
    if isinstance(value, list):
        return [_convert(v, seen) for v in value]
    if isinstance(value, tuple):
        return tuple(_convert(v, seen) for v in value)
    if isinstance(value, dict):
        return {k: _convert(v, seen) for k, v in value.items()}
    return value


def to_dspy(program: Module, seen: dict[int, Any] | None = None) -> Any:
    """The program as a dspy.Module: same class code and attributes, DSPy predictors."""
    seen = {} if seen is None else seen
    cls: Any = _shell_class(type(program))
    shell = cls.__new__(cls)
    dspy.Module._base_init(shell)
    seen[id(program)] = shell  # a program that refers to itself converts to itself
    for name, value in vars(program).items():
        if name not in ("callbacks", "history", "_compiled"):
            shell.__dict__[name] = _convert(value, seen)
    shell._compiled = bool(getattr(program, "_compiled", False))
    return shell


def rebuild(payload: dict[str, Any]) -> Any:
    """``{"pickle": bytes, ...}`` from the host -> a fresh dspy.Module (state as shipped)."""
    import cloudpickle

    data = payload.get("pickle")
    if not isinstance(data, bytes):
        raise TypeError("a composite program travels as {'pickle': <cloudpickle bytes>}")
    program = cloudpickle.loads(data)
    if not isinstance(program, Module):
        raise TypeError(f"expected a dspex.Module, got {type(program).__name__}")
    return to_dspy(program)


@handler(H.PROGRAM, concurrent=True)
def run_program(ctx: Context, program: dict[str, Any], inputs: dict[str, Any], lm: Any = None,
                adapter: Any = None, usage: bool = True) -> dict[str, Any]:
    """Run a shipped composite program once in DSPy -> ``{"outputs", "usage", "pid"}``."""
    from .dspy_handlers import _invoke

    key = hashlib.sha256(program["pickle"]).hexdigest()
    return _invoke(ctx, _PROGRAMS.get(key, lambda: rebuild(program)), inputs, lm, adapter, usage)
