"""The layering contracts (.importlinter) hold, fail on a forbidden import, and the worker
runtime loads only the standard library and msgpack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports")
needs_linter = pytest.mark.skipif(LINT is None, reason="import-linter is in the test extra: pip install -e '.[test]'")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    assert LINT is not None
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([LINT, "--no-logo", "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=100)


@needs_linter
def test_the_contracts_hold() -> None:
    out = _lint(ROOT, ROOT / "src")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@needs_linter
def test_a_forbidden_import_breaks_the_check(tmp_path: Path) -> None:
    """A copy of the package with native importing the router: the same check must fail."""
    shutil.copytree(ROOT / "src" / "dspex", tmp_path / "src" / "dspex",
                    ignore=lambda d, names: [n for n in names if not (n.endswith(".py") or Path(d, n).is_dir())
                                             or n == "__pycache__"])
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    values = tmp_path / "src" / "dspex" / "native" / "values.py"
    values.write_text(values.read_text() + "\nfrom dspex.router import table  # noqa: E402\n")
    out = _lint(tmp_path, tmp_path / "src")
    assert out.returncode != 0
    assert "dspex.native.values -> dspex.router.table" in out.stdout
    assert "native imports nothing of pool, bridge, router, pipeline, local BROKEN" in out.stdout


def test_the_worker_runtime_loads_only_stdlib_and_msgpack() -> None:
    code = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "import dspex.pool.worker, dspex.pool.handler, dspex.pool.protocol, dspex.wire\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    # msgpack's C extension brings Cython's runtime modules along
    extras = {m for m in loaded if m == "cython_runtime" or m.startswith("_cython_")}
    third_party = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names) - {"dspex", "_distutils_hack"}
    assert third_party - extras == {"msgpack"}, third_party
    heavy = [m for m in loaded if m.startswith(("dspex.native.", "dspex.router", "dspex.api", "dspex.pipeline.",
                                                "dspex.bridge", "dspex.local", "dspex.pool.pool"))]
    assert heavy == []
