"""The same pool workloads on the local backend and on the Ray backend, in one run.

    python bench/bench_ray.py                 # ~2 minutes (Ray and DSPy start included)
    python bench/bench_ray.py --quick         # fewer calls
    python bench/bench_ray.py --markdown bench/results/ray.md

Systems (2 workers each): ``dspex.pool.Pool`` (local processes), ``dspex.pool.RayPool``
(Ray actors on a local Ray instance started here), and bare Ray actors
(``ray.get(actor.echo.remote(x))``) so the cost of dspex's layer on Ray shows apart
from the cost of Ray itself. Workloads:

* echo: p50/p99 of sequential calls from one caller; calls/s with 8 caller threads;
  calls/s with 64 asyncio calls in flight (``acall``: several per worker);
* DSPy predict: the bridge's ``dspy.run`` (``Predict``) with DSPy's DummyLM inside the
  worker: p50 from one caller and calls/s with 8 caller threads.

Latencies are taken round-robin (one call per system per round) so the shared
machine's noise hits every system alike. "Ray hop" = Ray p50 - local p50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from bench_pool import throughput  # 8 caller threads for N seconds: the pool benchmark's own

PAYLOAD: Any = {"question": "What is the capital of France?", "n": 1}
SIG = "question -> answer"
INPUTS = {"question": "What is the capital of France?"}
DUMMY = {"kind": "dummy", "answers": {"answer": "Paris"}, "always": True}
ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off"}
WORKERS, CALLERS, IN_FLIGHT = 2, 8, 64


def quantiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": s[len(s) // 2], "p99": s[min(len(s) - 1, int(len(s) * 0.99))], "mean": statistics.fmean(s)}


def latencies(fns: dict[str, Callable[[], Any]], n: int, warmup: int = 50) -> dict[str, dict[str, float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    pc = time.perf_counter
    for _ in range(n):
        for name, fn in fns.items():
            t = pc()
            fn()
            samples[name].append(pc() - t)
    return {k: quantiles(v) for k, v in samples.items()}


def in_flight(acall: Callable[[], Any], total: int, window: int = IN_FLIGHT) -> float:
    """Calls/s with ``window`` asyncio calls in flight at all times."""

    async def main() -> float:
        sem = asyncio.Semaphore(window)

        async def one() -> None:
            async with sem:
                await acall()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        return total / (time.perf_counter() - t0)

    return asyncio.run(main())


@contextmanager
def systems(with_dspy: bool) -> Iterator[dict[str, Any]]:
    import ray

    from dspex.pool import Pool, RayPool

    handlers = ["dspex.testing.handlers"] + (["dspex.bridge.dspy_handlers"] if with_dspy else [])
    preload = ["dspy"] if with_dspy else []
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    local = Pool("bench-local", size=WORKERS, handlers=handlers, preload=preload, env=ENV, forward_stderr=False)
    remote = RayPool("bench-ray", size=WORKERS, handlers=handlers, preload=preload, env=ENV, num_cpus=1,
                     start_timeout_s=300)

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, x: Any) -> Any:
            return x

    try:
        local.start()
        remote.start()
        actors = [Echo.remote() for _ in range(WORKERS)]
        ray.get([a.echo.remote(1) for a in actors])
        yield {"local": local, "ray": remote, "actors": actors, "ray_version": ray.__version__}
    finally:
        local.close()
        remote.close()
        ray.shutdown()


def bare_ray_echo(actors: list[Any]) -> Callable[[], Any]:
    import ray

    rr = [0]

    def one() -> Any:
        rr[0] += 1
        return ray.get(actors[rr[0] % len(actors)].echo.remote(PAYLOAD))

    return one


def run(quick: bool, with_dspy: bool) -> dict[str, Any]:
    n = 300 if quick else 1500
    secs = 1.5 if quick else 4.0
    total = 2000 if quick else 10_000
    out: dict[str, Any] = {}
    with systems(with_dspy) as s:
        local, remote = s["local"], s["ray"]
        out["ray_version"] = s["ray_version"]
        bare = bare_ray_echo(s["actors"])
        lat = latencies({"local": lambda: local.call("echo", PAYLOAD), "ray": lambda: remote.call("echo", PAYLOAD),
                         "bare": bare}, n)
        out["echo"] = {
            k: {**lat[k]} for k in lat
        }
        for k, fn in (("local", lambda: local.call("echo", PAYLOAD)), ("ray", lambda: remote.call("echo", PAYLOAD)),
                      ("bare", bare)):
            out["echo"][k]["threads"] = throughput(fn, secs)
        for k, p in (("local", local), ("ray", remote)):
            out["echo"][k]["async"] = in_flight(lambda p=p: p.acall("echo", PAYLOAD), total)
        if with_dspy:
            def predict(p: Any) -> Callable[[], Any]:
                return lambda: p.call("dspy.run", module="Predict", signature=SIG, inputs=INPUTS, lm=DUMMY, usage=False)

            lat = latencies({"local": predict(local), "ray": predict(remote)}, max(50, n // 5), warmup=20)
            out["predict"] = {k: {**lat[k], "threads": throughput(predict(p), secs)}
                              for k, p in (("local", local), ("ray", remote))}
    return out


def table(res: dict[str, Any]) -> str:
    us = 1e6
    e, lines = res["echo"], []
    lines.append("| workload | local Pool | RayPool | bare Ray actors | RayPool vs local | RayPool vs bare Ray |")
    lines.append("|---|---|---|---|---|---|")

    def row(name: str, key: str, fmt: Callable[[float], str], slower_is_bigger: bool, d: dict[str, Any]) -> None:
        loc, ray_, bare = d["local"].get(key), d["ray"].get(key), d.get("bare", {}).get(key)
        ratio = (ray_ / loc) if slower_is_bigger else (loc / ray_)
        vs_bare = "" if bare is None else (f"{ray_ / bare:.2f}×" if slower_is_bigger else f"{bare / ray_:.2f}×")
        word = "slower"
        lines.append(f"| {name} | {fmt(loc)} | {fmt(ray_)} | {'' if bare is None else fmt(bare)} | "
                     f"{ratio:.1f}× {word} | {vs_bare} |")

    row("echo p50 (1 caller)", "p50", lambda v: f"{v * us:,.0f} µs", True, e)
    row("echo p99 (1 caller)", "p99", lambda v: f"{v * us:,.0f} µs", True, e)
    row(f"echo calls/s ({CALLERS} threads)", "threads", lambda v: f"{v:,.0f}", False, e)
    row(f"echo calls/s ({IN_FLIGHT} asyncio in flight)", "async", lambda v: f"{v:,.0f}", False, e)
    if "predict" in res:
        p = res["predict"]
        row("DSPy Predict p50 (DummyLM, 1 caller)", "p50", lambda v: f"{v * us:,.0f} µs", True, p)
        row(f"DSPy Predict calls/s ({CALLERS} threads)", "threads", lambda v: f"{v:,.0f}", False, p)
    hop = (e["ray"]["p50"] - e["local"]["p50"]) * us
    layer = (e["ray"]["p50"] - e["bare"]["p50"]) * us
    lines.append("")
    lines.append(f"Ray hop (RayPool p50 - local p50, echo): **{hop:,.0f} µs per call**; dspex's layer on top of "
                 f"a bare Ray actor call: {layer:+,.0f} µs. Ray {res['ray_version']}, {WORKERS} workers each.")
    if "predict" in res:
        ph = (res["predict"]["ray"]["p50"] - res["predict"]["local"]["p50"]) * us
        lines.append(f"DSPy Predict: the Ray hop adds {ph:,.0f} µs to a {res['predict']['local']['p50'] * us:,.0f} µs call.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls (also DSPEX_BENCH_QUICK=1)")
    ap.add_argument("--no-dspy", action="store_true", help="echo only (no DSPy import in the workers)")
    ap.add_argument("--markdown", default="", help="also write the table to this file")
    args = ap.parse_args()
    quick = args.quick or os.environ.get("DSPEX_BENCH_QUICK") == "1"
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray is not installed: pip install 'dspex[ray]'", file=sys.stderr)
        raise SystemExit(2) from None
    t0 = time.perf_counter()
    res = run(quick, with_dspy=not args.no_dspy)
    text = table(res)
    print(text)
    print(f"\n(total {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f})")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
