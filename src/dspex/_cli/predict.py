"""``dspex predict "question -> answer" question="..."``: one prediction."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import (
    UsageError,
    emit_json,
    lm_from_args,
    lm_label,
    parse_json_object,
    parse_kv,
    print_fields,
    to_jsonable,
)


def _is_str_field(field: Any) -> bool:
    annotation = getattr(field, "annotation", str)
    return annotation is str or annotation is None


def collect_inputs(sig: Any, pairs: list[str], input_json: str | None) -> dict[str, Any]:
    """Inputs from ``k=v`` pairs and ``--input-json``, checked against the signature.

    str fields keep the text as typed; other fields get JSON parsing (``n=3`` -> 3).
    """
    fields = dict(sig.input_fields)
    raw_keys = [name for name, f in fields.items() if _is_str_field(f)]
    inputs: dict[str, Any] = parse_json_object(input_json, what="--input-json") if input_json else {}
    inputs.update(parse_kv(pairs, what="input", raw_keys=raw_keys))
    expected = ", ".join(fields) or "(none)"
    unknown = [k for k in inputs if k not in fields]
    if unknown:
        raise UsageError(
            f"unknown input field {unknown[0]!r} (the signature's inputs are: {expected})",
            "pass only the signature's input fields",
        )
    missing = [k for k in fields if k not in inputs]
    if missing:
        example = " ".join(f'{k}="..."' for k in missing)
        raise UsageError(
            f"missing input field {missing[0]!r} (the signature's inputs are: {expected})", f"add {example}"
        )
    return inputs


def run(args: argparse.Namespace) -> int:
    from .. import api, context

    sig = api.signature(args.signature, instructions=args.instructions)
    inputs = collect_inputs(sig, args.inputs, args.input_json)
    lm = lm_from_args(args)
    kwargs: dict[str, Any] = {}
    if args.impl:
        kwargs["impl"] = args.impl
    if lm is not None:
        kwargs["lm"] = lm
    with context() as usage:
        if args.cot:
            prediction = api.chain_of_thought(sig, **kwargs)(**inputs)
        else:
            prediction = api.predict(sig, inputs, **kwargs)
    outputs = _outputs(prediction, sig, cot=args.cot)
    if args.json:
        try:
            decision = api.explain("chain_of_thought" if args.cot else "predict", sig, impl=args.impl)
        except Exception:  # explaining is best effort; the call itself reports real errors
            decision = None
        emit_json(
            {
                "signature": sig.to_string(),
                "inputs": inputs,
                "outputs": outputs,
                "impl": getattr(decision, "impl", None)
                or ("native" if args.impl in (None, "auto") else args.impl),
                "why": getattr(decision, "reason", None),
                # what the worker pool was sent (the router's op table), [] when native
                "handlers": list(getattr(decision, "handlers", ()) or ()),
                "lm": lm_label(lm),
                "usage": usage.as_dict(),
            }
        )
    else:
        print_fields(outputs)
        sys.stdout.flush()
    return 0


def _outputs(prediction: Any, sig: Any, cot: bool) -> dict[str, Any]:
    names = list(sig.output_fields)
    if cot and "reasoning" not in names:
        names.insert(0, "reasoning")
    data: dict[str, Any] = {}
    getter = prediction.get if hasattr(prediction, "get") else None
    for name in names:
        value = getter(name, None) if getter is not None else getattr(prediction, name, None)
        data[name] = value
    # Anything else the prediction carries (e.g. extra outputs of a dspy module).
    if hasattr(prediction, "items"):
        try:
            for k, v in prediction.items():
                data.setdefault(k, v)
        except Exception:
            pass
    return to_jsonable(data)
