"""``dspex predict "question -> answer" question="..."``: one prediction."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import (
    EnvironmentProblem,
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


def _operations(impl: str | None) -> tuple[Any, Any, Any, Any]:
    """(signature, predict, chain_of_thought, explain) from the router-backed API, else native.

    ``predict(sig, inputs, **kw)`` and ``chain_of_thought(sig, inputs, **kw)`` both return a
    prediction. The native fallback serves ``--impl auto|native`` when ``dspex.api`` is not
    part of this install; ``--impl dspy`` needs the API (it routes to a worker pool).
    """
    try:
        from .. import api
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("dspex"):
            raise
        if impl == "dspy":
            raise EnvironmentProblem(
                "--impl dspy needs dspex.api, which this install lacks",
                "reinstall dspex, or use --impl native",
            ) from None
    else:

        def cot(sig: Any, inputs: dict[str, Any], **kw: Any) -> Any:
            return api.chain_of_thought(sig, **kw)(**inputs)

        def explain(op: str, sig: Any) -> Any:
            try:
                return api.explain(op, sig, impl=impl)
            except Exception:  # explaining is best effort; the call itself reports real errors
                return None

        return api.signature, api.predict, cot, explain

    from ..native.predict import ChainOfThought, Predict
    from ..native.signature import signature

    def predict(sig: Any, inputs: dict[str, Any], lm: Any = None, **_: Any) -> Any:
        return Predict(sig)(**inputs, lm=lm)

    def chain_of_thought(sig: Any, inputs: dict[str, Any], lm: Any = None, **_: Any) -> Any:
        return ChainOfThought(sig)(**inputs, lm=lm)

    return signature, predict, chain_of_thought, lambda op, sig: None


def run(args: argparse.Namespace) -> int:
    import dspex

    make_signature, predict, chain_of_thought, explain = _operations(args.impl)
    sig = (
        make_signature(args.signature, instructions=args.instructions)
        if args.instructions
        else make_signature(args.signature)
    )
    inputs = collect_inputs(sig, args.inputs, args.input_json)
    lm = lm_from_args(args)
    op = chain_of_thought if args.cot else predict
    kwargs: dict[str, Any] = {}
    if args.impl:
        kwargs["impl"] = args.impl
    if lm is not None:
        kwargs["lm"] = lm
    with dspex.context() as usage:
        prediction = op(sig, inputs, **kwargs)
    outputs = _outputs(prediction, sig, cot=args.cot)
    if args.json:
        decision = explain("chain_of_thought" if args.cot else "predict", sig)
        emit_json(
            {
                "signature": sig.to_string() if hasattr(sig, "to_string") else args.signature,
                "inputs": inputs,
                "outputs": outputs,
                "impl": getattr(decision, "impl", None)
                or ("native" if args.impl in (None, "auto") else args.impl),
                "why": getattr(decision, "reason", None),
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
