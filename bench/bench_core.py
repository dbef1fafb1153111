"""Native core vs DSPy 3.4.1, side by side: import, signature parsing, ChatAdapter format/parse.

    python bench/bench_core.py [--quick]

Imports are measured in fresh subprocesses (median of several runs); the rest
in this process with timeit (best of 5 repeats, per-call time).
"""

# ruff: noqa: B023 - each lambda is timed inside its own loop iteration
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import timeit
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

QUICK = "--quick" in sys.argv
IMPORT_RUNS = 3 if QUICK else 7

_IMPORT_CODE = """
import time, resource, sys
t = time.perf_counter()
import {module}
dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def measure_import(module: str) -> tuple[float, float]:
    times, rss = [], []
    for _ in range(IMPORT_RUNS):
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_CODE.format(module=module)], capture_output=True, text=True, check=True
        )
        t, r = out.stdout.split()
        times.append(float(t))
        rss.append(float(r))
    return statistics.median(times), statistics.median(rss)


def per_call(fn: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.2f} µs"


def main() -> None:
    rows: list[tuple[str, float, float, str]] = []

    d_imp, d_rss = measure_import("dspy")
    x_imp, x_rss = measure_import("dspex")
    rows.append(("import (fresh process, median)", x_imp, d_imp, "s"))
    print(f"import RSS: dspex {x_rss:.0f} MB, dspy {d_rss:.0f} MB (whole process, median)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dspy
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    from dspex.native.adapters import ChatAdapter, JSONAdapter
    from dspex.native.signature import _compile, signature

    n = 200 if QUICK else 2000
    simple, typed = "question -> answer", "context: list[str], question: str -> answer: int, sources: list[str]"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, spec in (("signature 'question -> answer'", simple), ("signature (typed, 4 fields)", typed)):
            d = per_call(lambda spec=spec: dspy.Signature(spec), max(n // 10, 20))
            rows.append((f"{label}, uncached", per_call(lambda spec=spec: _compile(spec, None), n), d, "s"))
            rows.append((f"{label}, cached", per_call(lambda spec=spec: signature(spec), n * 10), d, "s"))

        for label, spec, inputs, reply in (
            ("'question -> answer'", simple, {"question": "What is 2+2?"}, "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"),
            (
                "typed",
                typed,
                {"context": ["a", "b"], "question": "q"},
                "[[ ## answer ## ]]\n4\n\n[[ ## sources ## ]]\n[\"a\", \"b\"]\n\n[[ ## completed ## ]]",
            ),
        ):
            dsig, xsig = dspy.Signature(spec), signature(spec)
            demos = [{"question": "1+1?", "answer": "2", "context": ["x"], "sources": ["x"]}]
            dchat, xchat = dspy.ChatAdapter(), ChatAdapter()
            assert xchat.format(xsig, demos, inputs) == dchat.format(dsig, demos, inputs)
            assert xchat.parse(xsig, reply) == dchat.parse(dsig, reply)
            rows.append((
                f"ChatAdapter.format {label}",
                per_call(lambda: xchat.format(xsig, [], inputs), n * 5),
                per_call(lambda: dchat.format(dsig, [], inputs), n),
                "s",
            ))
            rows.append((
                f"ChatAdapter.format {label} + 1 demo",
                per_call(lambda: xchat.format(xsig, demos, inputs), n * 5),
                per_call(lambda: dchat.format(dsig, demos, inputs), n),
                "s",
            ))
            rows.append((
                f"ChatAdapter.parse {label}",
                per_call(lambda: xchat.parse(xsig, reply), n * 5),
                per_call(lambda: dchat.parse(dsig, reply), n),
                "s",
            ))
        jreply = '{"answer": 4, "sources": ["a"]}'
        dsig, xsig = dspy.Signature(typed), signature(typed)
        rows.append((
            "JSONAdapter.parse typed",
            per_call(lambda: JSONAdapter().parse(xsig, jreply), n * 5),
            per_call(lambda: dspy.JSONAdapter().parse(dsig, jreply), n),
            "s",
        ))

    lines = [
        "| operation | dspex | DSPy 3.4.1 | DSPy / dspex |",
        "|---|---:|---:|---:|",
    ]
    for label, ours, theirs, _ in rows:
        lines.append(f"| {label} | {fmt(ours)} | {fmt(theirs)} | {theirs / ours:.1f}× |")
    lines.append(f"| import RSS (whole process) | {x_rss:.0f} MB | {d_rss:.0f} MB | {d_rss / x_rss:.1f}× |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
