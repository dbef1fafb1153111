"""dspex.pool vs multiprocessing.Pool, ProcessPoolExecutor, Ray actors and gRPC, side by side.

    python bench/bench_pool.py            # everything (about a minute)
    python bench/bench_pool.py --quick    # shorter runs, no startup section
    python bench/bench_pool.py --markdown bench/results/pool.md   # also write the table

Measures, for each system, with 2 worker processes:
  * echo round-trip latency from one caller (p50 / p99 over --n calls),
  * echo throughput with 8 caller threads (calls/s over --seconds),
and startup of 4 workers that preload DSPy (dspex template + fork) vs 4 cold
interpreters each importing DSPy. Peers that are not installed are reported as such.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

PAYLOAD: Any = {"question": "What is the capital of France?", "n": 1}
WORKERS = 2
CALLERS = 8


def echo(x: Any) -> Any:  # module level: picklable by reference for mp / cf
    return x


def quantiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


def latency(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    for _ in range(min(200, n)):
        fn()
    out = []
    pc = time.perf_counter
    for _ in range(n):
        t = pc()
        fn()
        out.append(pc() - t)
    return quantiles(out)


def throughput(fn: Callable[[], Any], seconds: float, callers: int = CALLERS) -> float:
    stop = threading.Event()
    counts = [0] * callers
    errors: list[BaseException] = []

    def run(i: int) -> None:
        n = 0
        try:
            while not stop.is_set():
                for _ in range(20):
                    fn()
                n += 20
        except BaseException as exc:  # report, do not hang
            errors.append(exc)
        counts[i] = n

    for _ in range(100):
        fn()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts) / dt


# ------------------------------------------------------------------------- systems
# Each system is a context manager yielding a zero-argument echo function. The local
# ones run side by side in interleaved rounds, so load swings on a shared machine hit
# them alike; Ray (heavy background daemons) runs alone afterwards.
@contextlib.contextmanager
def sys_dspex() -> Iterator[tuple[Callable[[], Any], str]]:
    from dspex.pool import Pool

    with Pool("bench", WORKERS, handlers=["dspex.testing.handlers"]) as pool:
        call = pool.call
        yield (lambda: call("echo", PAYLOAD)), "dspex.pool, sync call()"
        st = pool.stats()
        assert st["errors"] == 0, st


@contextlib.contextmanager
def sys_mp() -> Iterator[tuple[Callable[[], Any], str]]:
    with mp.get_context("fork").Pool(WORKERS) as pool:
        yield (lambda: pool.apply(echo, (PAYLOAD,))), "fork, apply()"


@contextlib.contextmanager
def sys_cf() -> Iterator[tuple[Callable[[], Any], str]]:
    with cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork")) as ex:
        yield (lambda: ex.submit(echo, PAYLOAD).result()), "fork, submit().result()"


@contextlib.contextmanager
def sys_ray() -> Iterator[tuple[Callable[[], Any], str]]:
    import ray

    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:

        @ray.remote
        class Echo:
            def echo(self, x: Any) -> Any:
                return x

        actors = [Echo.remote() for _ in range(WORKERS)]  # type: ignore[attr-defined]
        ray.get([a.echo.remote(1) for a in actors])
        rr = [0]

        def one() -> Any:
            rr[0] += 1
            return ray.get(actors[rr[0] % WORKERS].echo.remote(PAYLOAD))

        yield one, f"ray {ray.__version__}, 2 actors"
    finally:
        ray.shutdown()


_GRPC_SERVER = """
import sys, grpc
from concurrent import futures
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"""


@contextlib.contextmanager
def sys_grpc() -> Iterator[tuple[Callable[[], Any], str]]:
    import grpc
    import msgpack

    procs = [
        subprocess.Popen([sys.executable, "-c", _GRPC_SERVER], stdout=subprocess.PIPE, text=True)
        for _ in range(WORKERS)
    ]
    try:
        ports = [int(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
        stubs = [ch.unary_unary("/bench.Echo/Echo") for ch in channels]
        rr = [0]

        def one() -> Any:
            rr[0] += 1
            return msgpack.unpackb(stubs[rr[0] % WORKERS](msgpack.packb(PAYLOAD)))

        yield one, f"grpcio {grpc.__version__}, 2 servers, generic bytes handler"
        for ch in channels:
            ch.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def measure(
    systems: dict[str, tuple[Callable[[], Any], str]], n: int, seconds: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """Interleaved rounds: every system gets a latency slice and a throughput slice
    per round; p50/p99 over all samples, throughput = median of the rounds."""
    lat: dict[str, list[float]] = {k: [] for k in systems}
    tput: dict[str, list[float]] = {k: [] for k in systems}
    for fn, _ in systems.values():
        for _ in range(200):
            fn()
    for _ in range(rounds):
        for key, (fn, _) in systems.items():
            pc = time.perf_counter
            for _ in range(max(50, n // rounds)):
                t = pc()
                fn()
                lat[key].append(pc() - t)
            tput[key].append(throughput(fn, seconds / rounds))
    out = {}
    for key, (_, note) in systems.items():
        p50, p99 = quantiles(lat[key])
        out[key] = {"p50": p50, "p99": p99, "tput": statistics.median(tput[key]), "note": note}
    return out


def bench_startup() -> dict[str, float]:
    from dspex.pool import Pool

    t0 = time.perf_counter()
    with Pool("dspy-start", 4, preload=["dspy"], handlers=["dspex.testing.handlers"]) as pool:
        ready = time.perf_counter() - t0
        pids = pool.workers()
        assert len(pids) == 4 and len(set(pool.call("pid") for _ in range(8))) >= 1
        import_s = pool.stats()["template"]["import_s"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", "import dspy"]) for _ in range(4)]
    for p in procs:
        p.wait()
    cold4 = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dspy"], check=True)
    cold1 = time.perf_counter() - t0
    return {"dspex": ready, "template_import": import_s, "cold4": cold4, "cold1": cold1}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000, help="latency samples per system")
    ap.add_argument("--seconds", type=float, default=3.0, help="throughput run length")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma list: dspex,mp,cf,ray,grpc,startup")
    ap.add_argument("--markdown", default="", help="write the result table to this file")
    args = ap.parse_args()
    if args.quick:
        args.n, args.seconds = 2000, 1.5
    only = set(filter(None, args.only.split(",")))
    labels = {
        "dspex": "dspex.pool",
        "mp": "multiprocessing.Pool",
        "cf": "ProcessPoolExecutor",
        "grpc": "gRPC (grpcio)",
        "ray": "Ray actors",
    }
    makers = {"dspex": sys_dspex, "mp": sys_mp, "cf": sys_cf, "grpc": sys_grpc}
    print(f"# pool echo benchmark: {WORKERS} workers, {CALLERS} caller threads, payload {PAYLOAD!r}")
    print(f"# host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}")
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        active: dict[str, tuple[Callable[[], Any], str]] = {}
        for key, make in makers.items():
            if only and key not in only:
                continue
            try:
                active[key] = stack.enter_context(make())
            except ImportError as exc:
                results[key] = {"note": f"not installed ({exc.name})"}
        results.update(measure(active, args.n, args.seconds * args.rounds, args.rounds))
    if not only or "ray" in only:
        try:
            with sys_ray() as ray_sys:
                results.update(measure({"ray": ray_sys}, max(500, args.n // 5), args.seconds, 1))
        except ImportError:
            results["ray"] = {"note": "not installed (pip install ray)"}
        except Exception as exc:  # Ray failing must not hide the others
            results["ray"] = {"note": f"failed: {type(exc).__name__}: {exc}"}
    rows: list[tuple[str, dict[str, Any]]] = []
    for key in ("dspex", "mp", "cf", "ray", "grpc"):
        if key not in results:
            continue
        res = results[key]
        label = labels[key]
        rows.append((label, res))
        if "p50" in res:
            print(
                f"{label:24s} p50 {res['p50'] * 1e6:8.1f} us  p99 {res['p99'] * 1e6:8.1f} us  "
                f"{res['tput']:9.0f} calls/s   {res.get('note', '')}",
                flush=True,
            )
        else:
            print(f"{label:24s} {res['note']}", flush=True)
    base = dict(rows).get("dspex.pool", {})
    lines = [
        "| system | echo p50 | echo p99 | calls/s (2 workers, 8 callers) | p50 vs dspex | calls/s: dspex ×  | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, res in rows:
        if "p50" not in res:
            lines.append(f"| {label} | – | – | – | – | – | {res['note']} |")
            continue
        r50 = res["p50"] / base["p50"] if base.get("p50") else float("nan")
        rt = base["tput"] / res["tput"] if base.get("tput") else float("nan")
        lines.append(
            f"| {label} | {res['p50'] * 1e6:.0f} µs | {res['p99'] * 1e6:.0f} µs | {res['tput']:,.0f} | "
            f"{r50:.1f}× slower | {rt:.1f}× | {res.get('note', '')} |"
        )
    startup = None
    if not args.quick and (not only or "startup" in only):
        startup = bench_startup()
        print(
            f"4 DSPy workers ready: dspex {startup['dspex']:.2f} s (template import {startup['template_import']:.2f} s) | "
            f"4 cold interpreters importing dspy {startup['cold4']:.2f} s | one cold import {startup['cold1']:.2f} s | "
            f"ratio {startup['cold4'] / startup['dspex']:.1f}×"
        )
        lines += [
            "",
            "| startup | seconds |",
            "|---|---|",
            f"| dspex: 4 workers preloading dspy, ready | {startup['dspex']:.2f} |",
            f"| (of which the template's one `import dspy`) | {startup['template_import']:.2f} |",
            f"| 4 cold interpreters, each `import dspy`, in parallel | {startup['cold4']:.2f} |",
            f"| 1 cold interpreter `import dspy` | {startup['cold1']:.2f} |",
        ]
    table = "\n".join(lines)
    print()
    print(table)
    if base.get("p50"):
        ok50 = base["p50"] <= 40e-6
        okt = base["tput"] >= 25_000
        print(
            f"\ngoals: echo p50 <= 40 us: {'MET' if ok50 else 'MISSED'} ({base['p50'] * 1e6:.1f} us); "
            f">= 25,000 calls/s: {'MET' if okt else 'MISSED'} ({base['tput']:,.0f})"
            + (
                f"; 4 DSPy workers <= 1.0 s: {'MET' if startup['dspex'] <= 1.0 else 'MISSED'} ({startup['dspex']:.2f} s)"
                if startup
                else ""
            )
        )
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
