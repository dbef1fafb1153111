"""The pipeline framework's own overhead per step, against calling the same functions by hand.

    python bench/bench_pipeline.py [--runs N]

* native: a 10-step pipeline of trivial callables vs calling them in a loop; steps run
  inline on the event loop (``inline=True``), in the thread pool (the default for sync
  callables), or as ``async def``; through ``run()`` (a private event loop per run) and
  ``await arun()`` (inside a running loop).
* worker: a 1-step pipeline of the ``echo`` handler vs ``pool.call`` / ``await pool.acall``.

Per-step overhead = (pipeline time - by-hand time) / steps, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from dspex.pipeline import Pipeline, native, worker
from dspex.pool import Pool

STEPS = 10


def inc(x: int) -> int:
    return x + 1


async def ainc(x: int) -> int:
    return x + 1


def chain(fn: Any, **kw: Any) -> Pipeline:
    # step i reads x{i} and writes x{i+1}
    return Pipeline([native(fn, name=f"s{i}", reads={"x": f"x{i}"}, writes=f"x{i + 1}", **kw) for i in range(STEPS)])


def timeit(fn: Callable[[], Any], runs: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` mean seconds per call."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(runs):
            fn()
        best = min(best, (time.perf_counter() - t0) / runs)
    return best


def atimeit(make: Callable[[], Any], runs: int, repeat: int = 5) -> float:
    async def go() -> float:
        await make()
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(runs):
                await make()
            best = min(best, (time.perf_counter() - t0) / runs)
        return best

    return asyncio.run(go())


def by_hand() -> int:
    x = 0
    for _ in range(STEPS):
        x = inc(x)
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    n = args.runs
    rows: list[tuple[str, float, float, int]] = []  # (what, pipeline s, by-hand s, steps)

    hand = timeit(by_hand, n * 10)
    p_inline, p_thread, p_async = chain(inc, inline=True), chain(inc), chain(ainc)
    assert p_inline.run(x0=0)["x10"] == 10
    rows.append(("native inline, run()", timeit(lambda: p_inline.run(x0=0), n), hand, STEPS))
    rows.append(("native inline, await arun()", atimeit(lambda: p_inline.arun(x0=0), n), hand, STEPS))
    rows.append(("native async def, await arun()", atimeit(lambda: p_async.arun(x0=0), n), hand, STEPS))
    rows.append(("native sync in thread, run()", timeit(lambda: p_thread.run(x0=0), n), hand, STEPS))
    rows.append(("native sync in thread, await arun()", atimeit(lambda: p_thread.arun(x0=0), n), hand, STEPS))

    with Pool("bench", 1, handlers=["dspex.testing.handlers"]) as pool:
        direct = timeit(lambda: pool.call("echo", x=1), n * 3)
        adirect = atimeit(lambda: pool.acall("echo", x=1), n * 3)
        one = Pipeline([worker(handler="echo", pool="bench", reads=["x"], writes="y")], pools={"bench": pool})
        ten = Pipeline(
            [worker(handler="echo", pool="bench", name=f"e{i}", reads={"x": f"x{i}"}, writes=f"x{i + 1}")
             for i in range(STEPS)],
            pools={"bench": pool},
        )
        rows.append(("worker echo, 1 step, run() vs pool.call", timeit(lambda: one.run(x=1), n), direct, 1))
        rows.append(("worker echo, 1 step, arun() vs pool.acall", atimeit(lambda: one.arun(x=1), n), adirect, 1))
        rows.append(("worker echo, 10 steps, arun() vs 10x pool.acall",
                     atimeit(lambda: ten.arun(x0=1), n // 3), adirect * STEPS, STEPS))

    print(f"{'what':50} {'pipeline':>11} {'by hand':>11} {'ratio':>7} {'overhead/step':>14}")
    for what, piped, manual, steps in rows:
        per_step = (piped - manual) / steps * 1e6
        print(f"{what:50} {piped * 1e6:9.1f}us {manual * 1e6:9.1f}us {piped / manual:6.1f}x {per_step:11.1f}us")
    print(f"\n(median of nothing: best-of-5 means; {os.cpu_count()} CPUs; python {os.sys.version.split()[0]})")
    _ = statistics  # stdlib only


if __name__ == "__main__":
    main()
