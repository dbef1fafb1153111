"""Run the dspex benchmarks one after another (what `dspex bench` runs).

    python bench/run_all.py                 every benchmark, full counts
    python bench/run_all.py --quick         reduced counts, finishes in seconds
    python bench/run_all.py core pool       only these (names or file names)
    python bench/run_all.py --list          what exists
    python bench/run_all.py --json          one JSON document on stdout (bench output -> stderr)

Each benchmark is a separate script, ``bench/bench_<name>.py``, run in its own
process with this interpreter. Quick mode sets ``DSPEX_BENCH_QUICK=1`` in the
benchmark's environment and passes ``--quick`` to scripts that accept it (their
source mentions ``--quick``); scripts without a quick mode are skipped in quick
mode unless named explicitly, so ``--quick`` stays short. Per-benchmark time
limit: ``--timeout`` seconds (default 60 quick, 1800 full).

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
ORDER = ["core", "lm", "pool", "bridge", "pipeline", "local"]
DESCRIPTIONS = {
    "core": "signature parse, adapter format/parse, Predict with an in-process LM vs DSPy",
    "lm": "Predict over HTTP and concurrent calls against the fake LM server vs DSPy",
    "pool": "pool echo round trip and throughput vs multiprocessing / Ray / gRPC",
    "bridge": "DSPy in workers: worker start-up, dspy.run round trips",
    "pipeline": "mixed native/worker pipelines",
    "local": "the embedded model: start-up and predictions",
}


def discover() -> dict[str, Path]:
    """name -> script for every bench/bench_<name>.py present."""
    found = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    ordered = {n: found[n] for n in ORDER if n in found}
    ordered.update({n: p for n, p in found.items() if n not in ordered})
    return ordered


def has_quick_flag(script: Path) -> bool:
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
    if quick and has_quick_flag(script):
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
        rows = [
            {
                "name": n,
                "script": str(p.relative_to(HERE.parent)),
                "quick": has_quick_flag(p),
                "description": DESCRIPTIONS.get(n, ""),
            }
            for n, p in available.items()
        ]
        if args.json:
            print(json.dumps({"benchmarks": rows}, indent=2))
        else:
            for r in rows:
                print(
                    f"{r['name']:<10} {r['script']:<26} {'quick' if r['quick'] else '     '}  {r['description']}"
                )
        return 0

    wanted = [_normalize(n) for n in args.names]
    unknown = [n for n in wanted if n not in available]
    if unknown:
        sys.stderr.write(
            f"run_all.py: error: no benchmark {unknown[0]!r} — available: {', '.join(available) or 'none'}\n"
        )
        return 2
    skipped: list[dict[str, Any]] = []
    if wanted:
        selected = wanted
    elif args.quick:
        selected = [n for n, p in available.items() if has_quick_flag(p)]
        skipped = [
            {"name": n, "status": "skipped", "reason": "no quick mode"}
            for n in available
            if n not in selected
        ]
    else:
        selected = list(available)
    timeout = args.timeout or (60.0 if args.quick else 1800.0)

    results = []
    for name in selected:
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
