"""A predictor's inputs checked before any LM call, as DSPy 3.4.1 checks them (it warns;
dspex raises :class:`InputError` by default, naming each field).

* ``default=`` fills a missing input; ``default_factory=`` leaves it out of the prompt
  (DSPy applies only ``default``) without calling it missing;
* missing (non-Optional), extra and mistyped inputs (:func:`check_type`, DSPy's
  ``_is_value_compatible_with_type``) are problems;
* ``Predict(check_inputs="error"|"warn"|"off")``, else config ``[predict] check_inputs``
  (default ``"error"``); ``"warn"`` logs to the ``dspex`` logger.
"""

from __future__ import annotations

import logging
import types
import typing
from typing import Any

from ..errors import ConfigError, InputError
from ..settings import shared_config

__all__ = ["INPUT_MODES", "check_type", "prepare_inputs"]

logger = logging.getLogger("dspex")
INPUT_MODES = ("error", "warn", "off")
_ABSENT: Any = object()


def check_type(value: Any, expected: Any) -> bool:
    """DSPy 3.4.1's input type check (``_is_value_compatible_with_type``): a list of str
    passes for a str field; containers are checked element-wise; classes by isinstance."""
    if expected is str and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return True
    return _check(value, expected)


def _check(value: Any, expected: Any) -> bool:
    if expected is Any:
        return True
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin is typing.Union or origin is types.UnionType:
        return any(_check(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, set, frozenset):
        return isinstance(value, origin) and (not args or all(_check(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and (
            not args or all(_check(k, args[0]) and _check(v, args[1]) for k, v in value.items()))
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is ...:
            return all(_check(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(_check(v, a) for v, a in zip(value, args, strict=True)))
    return isinstance(value, expected) if isinstance(expected, type) else False


def _allows_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_allows_none(a) for a in typing.get_args(annotation))
    return False


_mode_memo: list[Any] = [None, "error"]  # (config version, [predict] check_inputs)


def _config_mode() -> str:
    version, conf = shared_config()
    if _mode_memo[0] != version:
        mode = (conf.get("predict") or {}).get("check_inputs", "error")
        if mode not in INPUT_MODES:
            raise ConfigError(f"[predict] check_inputs must be one of {', '.join(INPUT_MODES)}, not {mode!r}")
        _mode_memo[:] = [version, mode]
    return str(_mode_memo[1])


def prepare_inputs(predictor: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; missing, extra and mistyped inputs an InputError (or a warning)."""
    fields = predictor.signature.input_fields
    if inputs.keys() != fields.keys():
        for name, f in fields.items():
            # As DSPy 3.4.1: default= fills a missing input; default_factory= leaves it out
            # of the prompt (DSPy checks only `default`), but it is not "missing" either.
            if name not in inputs and f.has_default and f.extra is not None and "default_factory" not in dict(f.extra):
                inputs[name] = f.default_value()
    problems = None
    for name, f in fields.items():
        value = inputs.get(name, _ABSENT)
        if value is _ABSENT:
            if not f.has_default and not _allows_none(f.annotation):
                problems = problems or []
                problems.append(f"missing input {name!r}")
        elif value is not None and not (value.__class__ is str and f.annotation is str) \
                and not check_type(value, f.annotation):
            problems = problems or []
            problems.append(f"input {name!r} should be {f.type_name}, got {type(value).__name__} {value!r:.60}")
    if len(inputs) > len(fields) or problems:
        extra = [k for k in inputs if k not in fields]
        if extra:
            problems = problems or []
            problems.append(f"unexpected input(s) {', '.join(map(repr, extra))}")
        if problems:
            _bad_inputs(predictor, problems)
    return inputs

def _bad_inputs(predictor: Any, problems: list[str]) -> None:
    mode = predictor.check_inputs or _config_mode()
    if mode == "off":
        return
    expected = ", ".join(f"{n}: {f.type_name}" for n, f in predictor.signature.input_fields.items())
    text = f"{predictor!r}: {'; '.join(problems)} (expected inputs: {expected})"
    if mode == "warn":
        logger.warning("dspex: %s", text)
        return
    raise InputError(text + "; pass check_inputs='warn' (or set [predict] check_inputs) to only warn",
                     problems=problems)
