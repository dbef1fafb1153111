"""Soak: a million echo calls through one pool; host and worker RSS must stay flat.

    python bench/soak_pool.py                 # 1,000,000 calls, 8 caller threads
    python bench/soak_pool.py --calls 200000  # shorter

Prints progress with RSS at intervals and exits non-zero if any call failed or if
RSS grew past the thresholds after warm-up (the first interval).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from dspex.pool import Pool

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE / 1048576


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--intervals", type=int, default=10)
    ap.add_argument("--host-growth-mb", type=float, default=20.0)
    ap.add_argument("--worker-growth-mb", type=float, default=10.0)
    args = ap.parse_args()

    per_thread = args.calls // args.threads
    total = per_thread * args.threads
    step = max(1, total // args.intervals)
    done = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    rows: list[tuple[int, float, float, list[float]]] = []

    with Pool("soak", args.workers, handlers=["dspex.testing.handlers"], forward_stderr=True) as pool:
        payload = {"q": "What is the capital of France?", "n": 1, "tags": ["a", "b"], "b": b"\x00\x01"}

        def run(k: int) -> None:
            call = pool.call
            local = 0
            for i in range(per_thread):
                try:
                    out = call("echo", payload)
                    if out != payload:
                        raise AssertionError(f"bad echo {out!r}")
                except BaseException as exc:
                    errors.append(exc)
                    return
                local += 1
                if local == 1000:
                    with lock:
                        done[0] += local
                    local = 0
                # a session call now and then, so the session store is exercised too
                if i % 5000 == 0:
                    call("state_set", "k", i, session=f"t{k}-{i // 50_000}")
            with lock:
                done[0] += local

        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(args.threads)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        next_mark = step
        print(f"soak: {total:,} echo calls, {args.threads} threads, {args.workers} workers", flush=True)
        print(f"{'calls':>10} {'elapsed s':>9} {'calls/s':>8} {'host MB':>8}  worker MB", flush=True)
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            if done[0] >= next_mark or not any(t.is_alive() for t in threads):
                el = time.perf_counter() - t0
                host = rss_mb(os.getpid())
                workers = [rss_mb(p) for p in pool.workers()]
                rows.append((done[0], el, host, workers))
                print(
                    f"{done[0]:>10,} {el:>9.1f} {done[0] / el:>8.0f} {host:>8.1f}  "
                    + " ".join(f"{w:.1f}" for w in workers),
                    flush=True,
                )
                next_mark += step
            if errors:
                break
        for t in threads:
            t.join(60)
        st = pool.stats()
    elapsed = time.perf_counter() - t0
    print(
        f"done: {done[0]:,} calls in {elapsed:.1f} s ({done[0] / elapsed:,.0f}/s); errors={len(errors)} "
        f"pool errors={st['errors']} restarts={st['restarts']} p50={st['latency_s']['p50'] * 1e6:.0f} us "
        f"p99={st['latency_s']['p99'] * 1e6:.0f} us sessions={st['sessions']}"
    )
    ok = not errors and done[0] == total and st["errors"] == 0
    if errors:
        print(f"FAIL: {len(errors)} call(s) failed, first: {errors[0]!r}")
    if len(rows) >= 2:
        host_growth = max(r[2] for r in rows[1:]) - rows[0][2]
        worker_growth = max(max(r[3]) for r in rows[1:] if r[3]) - max(rows[0][3] or [0.0])
        print(
            f"RSS growth after warm-up: host {host_growth:+.1f} MB (limit {args.host_growth_mb}), "
            f"workers {worker_growth:+.1f} MB (limit {args.worker_growth_mb})"
        )
        if host_growth > args.host_growth_mb or worker_growth > args.worker_growth_mb:
            print("FAIL: RSS grew past the limit")
            ok = False
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
