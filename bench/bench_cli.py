"""Start-up cost of the `dspex` command, next to bare Python and `import dspy`.

    python bench/bench_cli.py            15 runs per command (5 for `import dspy`)
    python bench/bench_cli.py --quick    3 runs per command, no `import dspy`

Every row is a fresh process (what a user waits for); median and min wall time.
A DSPy-based command cannot start faster than `import dspy`, so that is the peer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], n: int, env: dict[str, str]) -> tuple[float, float]:
    # An empty folder as cwd: stray *.py files in a shared cwd would shadow packages.
    cwd = tempfile.mkdtemp(prefix="dspex-bench-cli-")
    xs = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, env=env, cwd=cwd)
            xs.append(time.perf_counter() - t0)
            if proc.returncode not in (0, 3):  # 3: `lm status` with no server running
                raise SystemExit(f"{cmd} failed: {proc.stderr.decode()[-500:]}")
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    return statistics.median(xs) * 1000, min(xs) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 runs per command, skip `import dspy`")
    args = parser.parse_args()
    quick = args.quick or os.environ.get("DSPEX_BENCH_QUICK") == "1"
    n = 3 if quick else 15
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    script = os.path.join(os.path.dirname(sys.executable), "dspex")
    dspex = (
        [script]
        if os.path.exists(script)
        else [
            shutil.which("dspex") or sys.executable,
            *([] if shutil.which("dspex") else ["-m", "dspex.cli"]),
        ]
    )

    from dspex.testing import FakeLMServer

    with FakeLMServer() as server:
        rows: list[tuple[str, list[str], int]] = [
            ("python -c pass (floor)", [sys.executable, "-c", "pass"], n),
            ("dspex --version", [*dspex, "--version"], n),
            ("dspex --help", [*dspex, "--help"], n),
            ("dspex lm status", [*dspex, "lm", "status"], n),
            ("dspex doctor --no-network", [*dspex, "doctor", "--no-network"], n),
            (
                "dspex predict (native, fake LM server)",
                [
                    *dspex,
                    "predict",
                    "question -> answer",
                    "question=hi",
                    "--lm",
                    "openai/x",
                    "--api-base",
                    server.base_url,
                ],
                n,
            ),
        ]
        if not quick:
            rows.insert(1, ("python -c 'import dspy' (peer floor)", [sys.executable, "-c", "import dspy"], 5))
        results = [(name, *timed(cmd, runs, env)) for name, cmd, runs in rows]
    floor = results[0][1]
    dspy_row = next((r for r in results if "import dspy" in r[0]), None)
    print("| command | median ms | min ms | over bare python | vs `import dspy` |")
    print("|---|---:|---:|---:|---:|")
    for name, med, mn in results:
        vs = f"{dspy_row[1] / med:.1f}x faster" if dspy_row and "dspex" in name else ""
        print(f"| `{name}` | {med:.0f} | {mn:.0f} | +{max(0.0, med - floor):.0f} ms | {vs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
