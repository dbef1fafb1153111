"""Run the dspex benchmarks one after another (what `dspex bench` runs).

    python bench/run_all.py                 every benchmark, full counts
    python bench/run_all.py --quick         reduced counts, finishes in seconds
    python bench/run_all.py core pool       only these (names or file names)
    python bench/run_all.py --list          what exists
    python bench/run_all.py --json          one JSON document on stdout (bench output -> stderr)

Each benchmark is a separate script, ``bench/bench_<name>.py``, run in its own
process with this interpreter. Quick mode (``--quick``):

* runs ``smoke``, built into this file: import time, signature parse, ChatAdapter
  format/parse, native Predict on an in-process LM, pool echo round trip, with
  small counts (a few seconds; a sanity check, not the published numbers);
* runs each ``bench_<name>.py`` that has a quick mode, i.e. whose source mentions
  ``--quick`` (it gets ``--quick``) or ``DSPEX_BENCH_QUICK`` (the environment
  always carries ``DSPEX_BENCH_QUICK=1``); scripts without one are listed as
  skipped unless named explicitly. Benchmark authors: honour either to take part.

Per-benchmark time limit: ``--timeout`` seconds (default 60 quick, 1800 full).

Exit code: 0 when every benchmark run succeeded, 1 when one failed or timed
out, 2 for an unknown benchmark name.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Display order: cheapest first.
ORDER = ["core", "cli", "lm", "pool", "bridge", "pipeline", "local"]
DESCRIPTIONS = {
    "core": "signature parse, adapter format/parse, Predict with an in-process LM vs DSPy",
    "lm": "Predict over HTTP and concurrent calls against the fake LM server vs DSPy",
    "pool": "pool echo round trip and throughput vs multiprocessing / Ray / gRPC",
    "bridge": "DSPy in workers: worker start-up, dspy.run round trips",
    "pipeline": "mixed native/worker pipelines",
    "local": "the embedded model: start-up and predictions",
    "cli": "start-up of the dspex command vs bare python and `import dspy`",
}


def discover() -> dict[str, Path]:
    """name -> script for every bench/bench_<name>.py present."""
    found = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    ordered = {n: found[n] for n in ORDER if n in found}
    ordered.update({n: p for n, p in found.items() if n not in ordered})
    return ordered


def has_quick_flag(script: Path) -> bool:
    """The script takes part in quick mode: it mentions --quick or DSPEX_BENCH_QUICK."""
    try:
        text = script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "--quick" in text or "DSPEX_BENCH_QUICK" in text


def _passes_flag(script: Path) -> bool:
    try:
        return "--quick" in script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _normalize(name: str) -> str:
    return Path(name).stem.removeprefix("bench_")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_one(name: str, script: Path, quick: bool, timeout: float, json_mode: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(script)]
    if quick and _passes_flag(script):
        cmd.append("--quick")
    env = dict(os.environ)
    if quick:
        env["DSPEX_BENCH_QUICK"] = "1"
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    header = f"=== bench {name}: {' '.join(cmd[1:])}"
    out = sys.stderr if json_mode else sys.stdout
    out.write(header + "\n")
    out.flush()
    t0 = time.perf_counter()
    status = "ok"
    rc: int | None = None
    tail: list[str] = []
    # The child's output is relayed line by line (and its tail kept for --json).
    proc = subprocess.Popen(
        cmd,
        cwd=str(HERE.parent),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own process group: a kill also reaches its workers
    )
    assert proc.stdout is not None
    stream = proc.stdout

    def relay() -> None:
        for line in stream:
            out.write(line)
            out.flush()
            tail.append(line.rstrip("\n"))
            del tail[:-40]

    # A thread relays the output so a silent, hung benchmark still hits the time limit.
    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        if rc != 0:
            status = "failed"
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        status = "timeout"
    except KeyboardInterrupt:
        _kill_group(proc)
        raise
    finally:
        reader.join(timeout=5)
    seconds = time.perf_counter() - t0
    return {
        "name": name,
        "script": str(script.relative_to(HERE.parent)),
        "status": status,
        "returncode": rc,
        "seconds": round(seconds, 3),
        "quick": quick,
        "output_tail": tail,
    }


SMOKE = "smoke"
SMOKE_SCRIPT = """
import json, os, statistics, subprocess, sys, time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
rows = []

def per_call(fn, n):
    fn()  # warm up
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t0) / n)
    return min(best)

def row(what, seconds, n):
    rows.append({"what": what, "us": round(seconds * 1e6, 2), "n": n})

imp = []
probe = "import time; t = time.perf_counter(); import dspex; print(time.perf_counter() - t)"
for _ in range(3):
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    imp.append(float(out.stdout.strip()))
row("import dspex (fresh process)", min(imp), 3)

import dspex
from dspex.native.signature import signature
from dspex.native.adapters import ChatAdapter
from dspex.testing import DummyLM

sig = signature("question -> answer")
row("parse signature (cached)", per_call(lambda: signature("question -> answer"), 2000), 2000)
adapter = ChatAdapter()
row("ChatAdapter.format", per_call(lambda: adapter.format(sig, demos=[], inputs={"question": "hi"}), 500), 500)
reply = "[[ ## answer ## ]]\\n4\\n\\n[[ ## completed ## ]]"
row("ChatAdapter.parse", per_call(lambda: adapter.parse(sig, reply), 2000), 2000)
lm = DummyLM()
p = dspex.Predict(sig)
row("Predict, in-process DummyLM", per_call(lambda: p(question="hi", lm=lm), 300), 300)

from dspex.pool import Pool
with Pool("smoke", 1, handlers=["dspex.testing.handlers"]) as pool:
    for _ in range(50):
        pool.call("echo", 1)
    lat = []
    for _ in range(500):
        t0 = time.perf_counter()
        pool.call("echo", 1)
        lat.append(time.perf_counter() - t0)
row("pool echo round trip p50 (1 worker)", statistics.median(lat), 500)
print(json.dumps(rows))
"""


def run_smoke(timeout: float, json_mode: bool) -> dict[str, Any]:
    """The built-in quick benchmark (in a child process, like the others)."""
    out = sys.stderr if json_mode else sys.stdout
    out.write(f"=== bench {SMOKE}: built-in quick sanity numbers\n")
    env = dict(os.environ, DSPEX_BENCH_QUICK="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SMOKE_SCRIPT], cwd=str(HERE.parent), env=env,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"name": SMOKE, "script": "run_all.py", "status": "timeout", "returncode": None,
                "seconds": round(time.perf_counter() - t0, 3), "quick": True, "output_tail": []}  # fmt: skip
    seconds = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    status = "ok" if proc.returncode == 0 else "failed"
    if status == "ok":
        try:
            rows = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            status = "failed"
    if rows:
        width = max(len(r["what"]) for r in rows)
        out.write(f"| {'what'.ljust(width)} | dspex µs |\n|{'-' * (width + 2)}|---------:|\n")
        for r in rows:
            out.write(f"| {r['what'].ljust(width)} | {r['us']:>8.1f} |\n")
    else:
        out.write(proc.stdout + proc.stderr)
    out.flush()
    tail = (proc.stdout + proc.stderr).splitlines()[-40:]
    return {"name": SMOKE, "script": "run_all.py", "status": status, "returncode": proc.returncode,
            "seconds": round(seconds, 3), "quick": True, "output_tail": tail, "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_all.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all present)")
    parser.add_argument("--quick", action="store_true", help="reduced counts (DSPEX_BENCH_QUICK=1, --quick)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--timeout", type=float, default=None, help="per-benchmark time limit in seconds")
    args = parser.parse_args(argv)

    available = discover()
    if args.list:
        rows_list: list[dict[str, Any]] = [
            {"name": SMOKE, "script": "bench/run_all.py", "quick": True,
             "description": "built-in quick sanity numbers (runs with --quick)"}
        ]  # fmt: skip
        rows = [
            {
                "name": n,
                "script": str(p.relative_to(HERE.parent)),
                "quick": has_quick_flag(p),
                "description": DESCRIPTIONS.get(n, ""),
            }
            for n, p in available.items()
        ]
        rows = rows_list + rows
        if args.json:
            print(json.dumps({"benchmarks": rows}, indent=2))
        else:
            for r in rows:
                print(
                    f"{r['name']:<10} {r['script']:<26} {'quick' if r['quick'] else '     '}  {r['description']}"
                )
        return 0

    wanted = [_normalize(n) for n in args.names]
    unknown = [n for n in wanted if n not in available and n != SMOKE]
    if unknown:
        sys.stderr.write(
            f"run_all.py: error: no benchmark {unknown[0]!r} — available: {', '.join(available) or 'none'}\n"
        )
        return 2
    skipped: list[dict[str, Any]] = []
    if wanted:
        selected = wanted
    elif args.quick:
        selected = [SMOKE] + [n for n, p in available.items() if has_quick_flag(p)]
        skipped = [
            {"name": n, "status": "skipped", "reason": "no quick mode (--quick / DSPEX_BENCH_QUICK)"}
            for n in available
            if n not in selected
        ]
    else:
        selected = list(available)
    timeout = args.timeout or (60.0 if args.quick else 1800.0)

    results = []
    for name in selected:
        if name == SMOKE:
            results.append(run_smoke(timeout, args.json))
        else:
            results.append(run_one(name, available[name], args.quick, timeout, args.json))
    failed = [r for r in results if r["status"] != "ok"]
    if args.json:
        print(
            json.dumps(
                {"ok": not failed, "quick": args.quick, "results": results, "skipped": skipped}, indent=2
            )
        )
    else:
        print("\n=== summary")
        for r in results:
            print(f"  {r['name']:<10} {r['status']:<8} {r['seconds']:8.2f} s")
        for s in skipped:
            print(f"  {s['name']:<10} skipped  ({s['reason']})")
        if not results:
            print("  (no benchmarks ran)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
