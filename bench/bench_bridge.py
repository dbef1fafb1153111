"""DSPy Predict through a pool worker vs DSPy in-process vs native dspex.

    python bench/bench_bridge.py            # ~1 minute; prints a table with ratios
    python bench/bench_bridge.py --quick    # fewer iterations

Two LMs, each instantiated where the call runs:

* instant: DSPy's ``DummyLM`` (in this process, and inside the worker through the
  bridge's ``{"kind": "dummy"}`` LM spec), ``dspex.testing.DummyLM`` for native;
* 50 ms: a FakeLMServer subprocess answering after 50 ms, over HTTP on loopback.

"pool added cost" = (DSPy via pool - DSPy in-process) / DSPy in-process per call:
what the worker boundary (msgpack frames, socket, handler dispatch, module and LM
cache lookups, result conversion) adds to DSPy's own per-call cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspex
from dspex.pool.pool import Pool
from dspex.testing import DummyLM, FakeLMServer

SIG = "question -> answer"
INPUTS = {"question": "What is the capital of France?"}


def interleaved(fns: dict[str, Callable[[], Any]], n: int, warmup: int = 20) -> dict[str, dict[str, float]]:
    """Time the variants round-robin, one call each per round: machine noise (other
    processes on a shared box) then hits every variant alike instead of whichever ran
    during a busy spell."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: {"mean": statistics.fmean(v), "p50": statistics.median(v)} for k, v in samples.items()}


def throughput(fn: Callable[[], Any], total: int, concurrency: int) -> float:
    fn()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(lambda _: fn(), range(total)))
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_fast = 300 if args.quick else 1500
    n_slow = 10 if args.quick else 30

    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off"}
    rows: list[tuple[str, str, dict[str, float]]] = []
    with Pool("bench-bridge", size=2, handlers=["dspex.bridge.dspy_handlers"], preload=["dspy"], env=env) as pool:
        # ---- instant LM --------------------------------------------------------------
        dummy_spec = {"kind": "dummy", "answers": {"answer": "Paris"}, "always": True}
        d_lm = dspy.utils.DummyLM({"": {"answer": "Paris"}})
        d_pred = dspy.Predict(SIG)

        def dspy_local() -> Any:
            with dspy.context(lm=d_lm):
                return d_pred(**INPUTS)

        def pool_raw() -> Any:
            return pool.call("dspy.run", module="Predict", signature=SIG, inputs=INPUTS, lm=dummy_spec, usage=False)

        def pool_inline() -> Any:
            return pool.call("dspy.run_inline", module="Predict", signature=SIG, inputs=INPUTS, lm=dummy_spec,
                             usage=False)

        def via_api() -> Any:
            return dspex.predict(SIG, INPUTS, impl="dspy", lm=dummy_spec, pool=pool)

        n_lm = DummyLM([{"answer": "Paris"}] * (n_fast + 100) * 2)
        n_pred = dspex.Predict(SIG)

        def native() -> Any:
            return n_pred(**INPUTS, lm=n_lm)

        assert pool_raw()["outputs"]["answer"] == pool_inline()["outputs"]["answer"] == via_api().answer == "Paris"
        timed = interleaved({"DSPy in-process": dspy_local, "DSPy via pool (pool.call)": pool_raw,
                             "DSPy via pool (pool.call, inline)": pool_inline,
                             "DSPy via pool (dspex.predict)": via_api, "native dspex": native}, n_fast)
        rows.extend(("instant", label, t) for label, t in timed.items())

        # ---- 50 ms LM ------------------------------------------------------------------
        server = FakeLMServer.subprocess(latency=0.05)
        try:
            lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False, max_tokens=64, temperature=0.0)
            h_lm = dspy.LM("hosted_vllm/fake", api_base=server.base_url, api_key="x", cache=False, max_tokens=64,
                           temperature=0.0)

            def dspy_http() -> Any:
                with dspy.context(lm=h_lm):
                    return d_pred(**INPUTS)

            def pool_http() -> Any:
                return dspex.predict(SIG, INPUTS, impl="dspy", lm=lm, pool=pool)

            def native_http() -> Any:
                return n_pred(**INPUTS, lm=lm)

            timed = interleaved({"DSPy in-process": dspy_http, "DSPy via pool (dspex.predict)": pool_http,
                                 "native dspex": native_http}, n_slow, warmup=2)
            rows.extend(("50 ms", label, t) for label, t in timed.items())
            tput = {
                "DSPy in-process, 8 threads": throughput(dspy_http, 48, 8),
                "DSPy via pool (2 workers), 8 threads": throughput(pool_http, 48, 8),
                "native dspex, 8 threads": throughput(native_http, 48, 8),
            }
        finally:
            server.close()

    base = {lm_kind: next(r[2] for r in rows if r[0] == lm_kind and r[1] == "DSPy in-process") for lm_kind in
            ("instant", "50 ms")}
    lines = ["| LM | path | mean per call | p50 | vs DSPy in-process |", "|---|---|---:|---:|---:|"]
    for lm_kind, label, t in rows:
        ratio = t["mean"] / base[lm_kind]["mean"]
        lines.append(f"| {lm_kind} | {label} | {t['mean'] * 1e6:,.0f} µs | {t['p50'] * 1e6:,.0f} µs | {ratio:.2f}x |")
    print("\n".join(lines))
    print()
    for lm_kind in ("instant", "50 ms"):
        local = base[lm_kind]["mean"]
        via = next(r[2] for r in rows if r[0] == lm_kind and r[1] == "DSPy via pool (dspex.predict)")["mean"]
        added = via - local
        local50 = base[lm_kind]["p50"]
        via50 = next(r[2] for r in rows if r[0] == lm_kind and r[1] == "DSPy via pool (dspex.predict)")["p50"]
        print(f"pool added cost, {lm_kind} LM: mean {added * 1e6:+,.0f} µs per call = {100 * added / local:+.1f}% "
              f"of DSPy's own per-call cost; p50 {100 * (via50 - local50) / local50:+.1f}% (goal: < 15%)")
        if lm_kind == "instant":
            raw = next(r[2] for r in rows if r[0] == lm_kind and r[1] == "DSPy via pool (pool.call)")["mean"]
            inline = next(r[2] for r in rows if r[0] == lm_kind and r[1] == "DSPy via pool (pool.call, inline)")["mean"]
            print(f"  (raw pool.call: threaded handler {100 * (raw - local) / local:+.1f}%, "
                  f"inline handler {100 * (inline - local) / local:+.1f}%)")
    print()
    print("| concurrent calls, 50 ms LM | calls/s |\n|---|---:|")
    for label, v in tput.items():
        print(f"| {label} | {v:,.0f} |")
    print(f"\npython {sys.version.split()[0]}, dspy {dspy.__version__}")


if __name__ == "__main__":
    main()
