"""The dspex.api package: one surface over its private per-job modules, loaded only on use."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import dspex
import dspex.api as api

pytestmark = pytest.mark.timeout(60)

# What the top-level package loads lazily from `.api` (dspex/__init__.py _LAZY).
OPERATIONS = ["signature", "compile_signature", "predict", "apredict", "predictor", "chain_of_thought", "react",
              "optimize", "aoptimize", "retrieve", "aretrieve", "explain", "router_stats"]


def test_operations_are_the_functions_not_the_modules_of_the_same_job() -> None:
    for name in OPERATIONS:
        value = getattr(api, name)
        assert inspect.isfunction(value), (name, value)
        assert getattr(dspex, name) is value, name
    assert inspect.isasyncgenfunction(api.optimize_events)
    assert inspect.isclass(api.OptimizeResult) and inspect.isclass(api.WorkerModule)


def test_all_names_and_the_helpers_others_import_resolve() -> None:
    assert set(OPERATIONS) <= set(api.__all__)
    for name in [*api.__all__, "signature_wire"]:
        assert callable(getattr(api, name)), name
    wire = api.signature_wire(dspex.signature("question -> answer: int"))
    assert wire == {"spec": "question -> answer: int"}
    assert api.tool_spec(lambda x: x, name="echo")["callback"] == "dspex.tool.echo"


def test_bare_import_does_not_load_the_api() -> None:
    code = "import dspex, sys; assert not any(m == 'dspex.api' or m.startswith('dspex.api.') for m in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
