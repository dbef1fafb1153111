"""``dspex bench [--quick] [NAME...]``: run ``bench/run_all.py`` of the dspex source tree.

The benchmarks live in the repository (``bench/``), not in the installed package,
because they need the peers (DSPy, Ray, gRPC) and write results next to the code.
``run_all.py`` is looked up in this order:

1. ``$DSPEX_BENCH_DIR/run_all.py``;
2. ``bench/run_all.py`` in the working directory or any parent (a checkout);
3. ``bench/run_all.py`` next to the package's source (an editable install).

It runs in a child process with this interpreter; its exit code is passed through
(0 all ran fine, 1 a benchmark failed or timed out, 2 unknown benchmark name).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .common import EnvironmentProblem


def find_runner() -> Path:
    candidates: list[Path] = []
    explicit = os.environ.get("DSPEX_BENCH_DIR")
    if explicit:
        path = Path(explicit).expanduser() / "run_all.py"
        if path.is_file():
            return path
        raise EnvironmentProblem(
            f"DSPEX_BENCH_DIR={explicit} has no run_all.py",
            "point DSPEX_BENCH_DIR at the bench/ folder of a dspex checkout",
        )
    cwd = Path.cwd()
    candidates += [folder / "bench" / "run_all.py" for folder in (cwd, *cwd.parents)]
    # src/dspex/_cli/bench.py -> repo root is three levels above the package.
    candidates.append(Path(__file__).resolve().parents[3] / "bench" / "run_all.py")
    for path in candidates:
        if path.is_file():
            return path
    raise EnvironmentProblem(
        "bench/run_all.py not found (benchmarks ship with the source, not the package)",
        "run from a dspex checkout (git clone, then cd into it) or set DSPEX_BENCH_DIR=/path/to/dspex/bench",
    )


def run(args: argparse.Namespace) -> int:
    runner = find_runner()
    cmd = [sys.executable, str(runner), *args.names]
    if args.quick:
        cmd.append("--quick")
    if args.list:
        cmd.append("--list")
    if args.json:
        cmd.append("--json")
    proc = subprocess.Popen(cmd, cwd=str(runner.parent.parent))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The runner got the same SIGINT from the terminal; give it a moment to stop its child.
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
