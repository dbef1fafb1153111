"""``dspex run pipeline.yaml --input k=v``: run a saved pipeline once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
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


def run(args: argparse.Namespace) -> int:
    path = Path(args.pipeline)
    if not path.is_file():
        raise UsageError(
            f"pipeline file {str(path)!r} does not exist", "check the path (YAML or JSON from Pipeline.save)"
        )
    inputs: dict[str, Any] = (
        parse_json_object(args.input_json, what="--input-json") if args.input_json else {}
    )
    inputs.update(parse_kv(args.input, what="--input"))

    import dspex
    from dspex.pipeline import Pipeline

    lm = lm_from_args(args)
    try:
        pipe = Pipeline.load(path)
    except (ValueError, KeyError, TypeError) as exc:
        from dspex.errors import DspexError

        if isinstance(exc, DspexError):
            raise
        raise UsageError(
            f"cannot load pipeline {str(path)!r}: {exc}", "check the file against Pipeline.save's format"
        ) from exc
    with dspex.context(lm=lm) as usage:
        result = pipe.run(inputs)
    outputs = _outputs(result)
    trace = to_jsonable(getattr(result, "trace", None) or [])
    if args.json:
        emit_json(
            {
                "pipeline": str(path),
                "inputs": inputs,
                "outputs": outputs,
                "trace": trace,
                "lm": lm_label(lm),
                "usage": usage.as_dict(),
            }
        )
        return 0
    print_fields(outputs)
    if args.trace and trace:
        sys.stdout.write("\ntrace:\n")
        for i, step in enumerate(trace, 1):
            sys.stdout.write(f"  {i}. {_trace_line(step)}\n")
    return 0


def _outputs(result: Any) -> dict[str, Any]:
    for attr in ("outputs", "values"):
        value = getattr(result, attr, None)
        if isinstance(value, dict):
            return to_jsonable(value)
    if hasattr(result, "items"):
        return {str(k): to_jsonable(v) for k, v in result.items() if k != "trace"}
    return {"result": to_jsonable(result)}


def _trace_line(step: Any) -> str:
    if not isinstance(step, dict):
        return str(step)
    name = step.get("step") or step.get("name") or "?"
    parts = [str(name)]
    for key in ("kind", "impl", "status"):
        if step.get(key) is not None:
            parts.append(f"{key}={step[key]}")
    for key in ("elapsed_s", "duration_s", "seconds"):
        if isinstance(step.get(key), (int, float)):
            parts.append(f"{step[key] * 1000:.1f} ms")
            break
    if step.get("pid") is not None:
        parts.append(f"pid={step['pid']}")
    return "  ".join(parts)
