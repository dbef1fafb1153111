"""One name, one thing: ``dspex.native`` / ``dspex.pipeline`` / ``dspex.worker`` /
``dspex.pool.manager`` are functions, at run time and for the type checker alike, whatever
submodules were imported first (no module-class swaps; see docs/internals.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

NAMES = ["dspex.native", "dspex.pipeline", "dspex.worker", "dspex.pool.manager"]

# Submodules imported *before* the names are looked at: each would rebind its parent's
# attribute to the module if the package had not been loaded first.
PROBE = """
import dspex.native.lm
import dspex.native.signature
import dspex.pipeline.core
import dspex.pipeline.steps
import dspex.pool
from dspex.pool import PoolManager
import dspex.pool._manager
import dspex
"""


def _runtime_kinds() -> dict[str, str]:
    code = PROBE + (
        "import inspect, json\n"
        f"print(json.dumps({{n: 'function' if inspect.isfunction(eval(n)) else type(eval(n)).__name__ "
        f"for n in {NAMES!r}}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return kinds


def _checker_kinds(tmp_path: Path) -> dict[str, str]:
    probe = tmp_path / "names_probe.py"
    probe.write_text(PROBE + "".join(f"reveal_type({n})\n" for n in NAMES))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(probe)],
        capture_output=True, text=True, timeout=200,
    )
    revealed = re.findall(r'Revealed type is "(.*)"', out.stdout)
    assert len(revealed) == len(NAMES), out.stdout + out.stderr
    return {n: "function" if r.startswith("def ") else r for n, r in zip(NAMES, revealed, strict=True)}


def test_runtime_names_are_the_functions() -> None:
    assert _runtime_kinds() == dict.fromkeys(NAMES, "function")


def test_type_checker_sees_what_runs(tmp_path: Path) -> None:
    assert _checker_kinds(tmp_path) == _runtime_kinds() == dict.fromkeys(NAMES, "function")


def test_no_module_class_swaps_left() -> None:
    src = Path(__file__).resolve().parents[2] / "src" / "dspex"
    swaps = [str(p.relative_to(src)) for p in src.rglob("*.py") if "].__class__ =" in p.read_text()]
    assert swaps == []


def test_the_packages_still_import_by_path() -> None:
    import dspex
    from dspex.native.lm import LM
    from dspex.pipeline import NativeStep, Pipeline, native

    assert dspex.native is native and dspex.Pipeline is Pipeline and dspex.LM is LM
    assert isinstance(dspex.native("question -> answer"), NativeStep)
    assert isinstance(dspex.pipeline([dspex.native("question -> answer")]), Pipeline)
