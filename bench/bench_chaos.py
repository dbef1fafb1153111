"""Chaos: random kill -9 of workers under 16 callers, recycling on; what happens to the calls.

    python bench/bench_chaos.py                  # dspex 60 s, then the peers 10 s each
    python bench/bench_chaos.py --seconds 20 --peer-seconds 5

16 caller threads call a mix of handlers (70% echo of a unique value, 15% a 10 ms sync
sleep, 15% a 10 ms async sleep) while a killer thread SIGKILLs a random worker every
0.1-0.5 s. dspex recycles by max_requests and max_age_s at the same time. Counted:

  ok                 answered with the right value
  failed in flight   WorkerCrashed naming a worker we killed (the call may have
                     started there: it is not retried, handlers need not be idempotent)
  re-dispatched      calls that provably never started on a dead worker and ran on
                     another (pool stats "requeued")
  lost               no answer within the call deadline, a wrong answer, or an error
                     that is neither of the above; must be 0

The peers get the same load and killer: concurrent.futures.ProcessPoolExecutor (a
kill breaks the executor: every pending call fails, we rebuild it) and
multiprocessing.Pool (a killed worker's task never returns: lost). Exits 1 if dspex
lost a call.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

CALLERS = 16
WORKERS = 4
DEADLINE_S = 30.0  # dspex's call deadline: a call without an answer by then is lost
PEER_DEADLINE_S = 5.0  # the peers lose calls for sure (mp.Pool): do not wait 30 s for each


def echo(x: Any) -> Any:  # peers: module level, picklable by reference
    return x


def nap(s: float) -> float:
    time.sleep(s)
    return s


def _pick(rnd: random.Random, token: list[int]) -> tuple[str, Any, Any]:
    """(handler, argument, expected answer) for one call."""
    r = rnd.random()
    if r < 0.70:
        return "echo", token, token
    if r < 0.85:
        return "sleep", 0.01, 0.01
    return "asleep", 0.01, 0.01


def _drive(
    seconds: float,
    one_call: Callable[[str, Any], Any],
    classify: Callable[[BaseException], str],
    worker_pids: Callable[[], list[int]],
    killed: set[int],
    deadline_s: float = DEADLINE_S,
) -> tuple[collections.Counter[str], int, float]:
    """Run the callers and the killer; per-outcome counts, kills made, elapsed seconds."""
    stop = threading.Event()
    per_thread: list[collections.Counter[str]] = [collections.Counter() for _ in range(CALLERS)]

    def caller(i: int) -> None:
        rnd = random.Random(i)
        n = 0
        c = per_thread[i]
        while not stop.is_set():
            n += 1
            name, arg, want = _pick(rnd, [i, n])
            try:
                got = one_call(name, arg)
            except BaseException as exc:  # classify every failure, hang on none
                c[classify(exc)] += 1
                continue
            c["ok" if got == want else "lost (wrong answer)"] += 1

    kills = 0

    def killer() -> None:
        nonlocal kills
        rnd = random.Random(12345)
        while not stop.wait(rnd.uniform(0.1, 0.5)):
            pids = worker_pids()
            if not pids:
                continue
            pid = rnd.choice(pids)
            killed.add(pid)  # before the kill: a caller may see its WorkerCrashed at once
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(CALLERS)]
    kt = threading.Thread(target=killer, daemon=True)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    kt.start()
    time.sleep(seconds)
    stop.set()
    kt.join()
    hung = 0
    for t in threads:
        t.join(deadline_s + 10)
        hung += t.is_alive()
    total: collections.Counter[str] = collections.Counter()
    for c in per_thread:
        total.update(c)
    if hung:
        total["lost (caller never answered)"] += hung
    return total, kills, time.perf_counter() - t0


def run_dspex(seconds: float) -> dict[str, Any]:
    from dspex.errors import CallTimeout, WorkerCrashed
    from dspex.pool import Pool

    killed: set[int] = set()
    pool = Pool(
        "chaos",
        WORKERS,
        handlers=["dspex.testing.handlers"],
        max_requests=500,
        max_age_s=5.0,
        call_timeout_s=DEADLINE_S,
        forward_stderr=False,
    )
    pool.start()

    def classify(exc: BaseException) -> str:
        if isinstance(exc, WorkerCrashed):
            return "failed in flight" if exc.pid in killed else "lost (crash of a worker we did not kill)"
        if isinstance(exc, CallTimeout):
            return "lost (deadline)"
        return f"lost ({type(exc).__name__})"

    try:
        counts, kills, dt = _drive(seconds, lambda n, a: pool.call(n, a), classify, pool.workers, killed)
        st = pool.stats()
    finally:
        pool.close()
    return {
        "system": "dspex.pool",
        "seconds": dt,
        "counts": counts,
        "kills": kills,
        "redispatched": st["requeued"],
        "recycles": st["recycles"],
        "restarts": st["restarts"],
    }


def run_cf(seconds: float) -> dict[str, Any]:
    lock = threading.Lock()
    box: list[cf.ProcessPoolExecutor] = [cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork"))]
    fns = {"echo": echo, "sleep": nap, "asleep": nap}

    def one_call(name: str, arg: Any) -> Any:
        ex = box[0]
        try:
            return ex.submit(fns[name], arg).result(PEER_DEADLINE_S)
        except cf.process.BrokenProcessPool:
            with lock:
                if box[0] is ex:  # the first to notice rebuilds it
                    box[0] = cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork"))
            raise

    def pids() -> list[int]:
        return list(getattr(box[0], "_processes", None) or {})

    def classify(exc: BaseException) -> str:
        if isinstance(exc, cf.process.BrokenProcessPool):
            return "failed in flight"  # every pending call of the broken executor
        return "lost (deadline)" if isinstance(exc, TimeoutError) else f"lost ({type(exc).__name__})"

    counts, kills, dt = _drive(seconds, one_call, classify, pids, set(), PEER_DEADLINE_S)
    box[0].shutdown(wait=False, cancel_futures=True)
    return {"system": "ProcessPoolExecutor", "seconds": dt, "counts": counts, "kills": kills}


def run_mp(seconds: float) -> dict[str, Any]:
    pool = mp.get_context("fork").Pool(WORKERS, maxtasksperchild=500)
    fns = {"echo": echo, "sleep": nap, "asleep": nap}

    def one_call(name: str, arg: Any) -> Any:
        return pool.apply_async(fns[name], (arg,)).get(PEER_DEADLINE_S)

    def pids() -> list[int]:
        return [p.pid for p in list(getattr(pool, "_pool", [])) if p.pid]

    def classify(exc: BaseException) -> str:
        return "lost (deadline)" if isinstance(exc, mp.TimeoutError) else f"lost ({type(exc).__name__})"

    counts, kills, dt = _drive(seconds, one_call, classify, pids, set(), PEER_DEADLINE_S)
    t = threading.Thread(target=pool.terminate, daemon=True)  # may hang after kills: bounded
    t.start()
    t.join(10)
    return {"system": "multiprocessing.Pool", "seconds": dt, "counts": counts, "kills": kills}


def _row(r: dict[str, Any]) -> str:
    c = r["counts"]
    lost = sum(v for k, v in c.items() if k.startswith("lost"))
    red = r.get("redispatched", "n/a")
    extra = f"recycles {r['recycles']}, restarts {r['restarts']}" if "recycles" in r else ""
    return (
        f"| {r['system']} | {r['seconds']:.0f} | {r['kills']} | {c['ok']:,} | {c['failed in flight']:,} | "
        f"{red} | {lost:,} | {extra} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0, help="dspex chaos run length")
    ap.add_argument("--peer-seconds", type=float, default=10.0, help="each peer's run length (0: skip)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"# chaos: {CALLERS} callers, {WORKERS} workers, kill -9 every 0.1-0.5 s; load {load:.1f}", flush=True)
    results = [run_dspex(args.seconds)]
    print(f"dspex done: {dict(results[0]['counts'])}", flush=True)
    if args.peer_seconds > 0:
        for fn in (run_cf, run_mp):
            results.append(fn(args.peer_seconds))
            print(f"{results[-1]['system']} done: {dict(results[-1]['counts'])}", flush=True)
    print()
    print("| system | s | kills | calls ok | failed in flight (killed worker) | re-dispatched | lost | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_row(r))
    ok = results[0]["counts"]["ok"]
    bad = {k: v for k, v in results[0]["counts"].items() if k.startswith("lost")}
    print(f"\ndspex: {ok:,} calls ok, lost {sum(bad.values())} {bad or ''}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
