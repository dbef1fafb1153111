"""``dspex run pipeline.yaml --input k=v``: run a saved pipeline once.

Inputs: ``--input k=v`` (repeatable; ``v`` parsed as JSON when it parses, else kept
as a string) over ``--input-json '{...}'``. Code the file references by
``module:function`` is imported only when it matches an ``--allow`` pattern
(``"mypkg.steps:*"``); the working directory is on the import path.

Human output: the fields the run produced (inputs left out), then with ``--trace``
the step table. ``--json``: ``{"pipeline", "inputs", "outputs", "result", "trace",
"usage", "lm"}`` with ``trace`` as ``Trace.as_dict()``.
"""

from __future__ import annotations

import argparse
import os
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
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `module:function` references next to the pipeline file

    from ..errors import DspexError
    from ..pipeline import Pipeline

    lm = lm_from_args(args)
    try:
        pipe = Pipeline.load(path, allow=list(args.allow), lm=lm)
    except DspexError:
        raise
    except Exception as exc:
        if not _is_file_problem(exc):
            raise
        # yaml / json syntax errors and wrong shapes: the file is the problem.
        raise UsageError(
            f"cannot load pipeline {str(path)!r}: {' '.join(str(exc).split())}",
            "check the file against what Pipeline.save writes",
        ) from None
    result = pipe.run(inputs, lm=lm)
    data = dict(result)
    outputs = {k: v for k, v in data.items() if k not in inputs}
    trace = result.trace
    if args.json:
        emit_json(
            {
                "pipeline": str(path),
                "inputs": inputs,
                "outputs": outputs,
                "result": data,
                "trace": trace.as_dict(),
                "usage": trace.usage,
                "lm": lm_label(lm),
            }
        )
        return 0
    print_fields(to_jsonable(outputs))
    if args.trace:
        sys.stdout.write("\n" + trace.table() + "\n")
    return 0


def _is_file_problem(exc: BaseException) -> bool:
    """YAML/JSON syntax errors and wrong shapes: the file is the problem (a usage error)."""
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError)):
        return True
    try:
        import yaml
    except ImportError:
        return False
    return isinstance(exc, yaml.YAMLError)
