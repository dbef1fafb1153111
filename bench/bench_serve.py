"""Serving over HTTP: `dspex serve` vs DSPy served the way its docs recommend (FastAPI +
dspy.asyncify), side by side in one run.

    python bench/bench_serve.py            # ~3 minutes
    python bench/bench_serve.py --quick    # a few seconds per row (sanity check)

Four processes per row, all on loopback: the fake LM server (50 ms per reply), the
service under test, and a load generator (raw keep-alive HTTP/1.1, one connection per
client, closed loop) in a process of its own, so the client does not share the server's
GIL. A third row serves the same native Predict from one bare Starlette route (the floor:
what the framework and the LM call cost without dspex serve's checks). Each client sends `{"question": "<unique>"}` (no cache can answer) for a fixed time.
The ceiling is clients / 0.05 s (1,280 req/s at 64 clients). Needs dspex[serve], dspy and
fastapi (`pip install fastapi==0.165.0`, in the `bench` extra).
"""


import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

LATENCY = 0.05
ROUNDS = 2
HERE = Path(__file__).resolve()


# ----------------------------------------------------------------- the DSPy service (docs recipe)
def dspy_app(api_base: str) -> Any:
    """DSPy's "Deploying" tutorial: FastAPI, a module wrapped in dspy.asyncify, dspy.configure(lm=...)."""
    import dspy
    from fastapi import FastAPI
    from pydantic import BaseModel

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    app = FastAPI()

    class Question(BaseModel):
        question: str

    lm = dspy.LM("openai/fake", api_base=api_base, api_key="unused", cache=False)
    dspy.configure(lm=lm)  # async_max_workers left at DSPy's default (8); the tutorial shows 4
    program = dspy.asyncify(dspy.Predict("question -> answer"))

    @app.post("/predict")
    async def predict(q: Question) -> dict[str, Any]:
        result = await program(question=q.question)
        return {"status": "success", "data": result.toDict()}

    return app


def bare_app(api_base: str) -> Any:
    """The floor: one Starlette route around the same native Predict, none of dspex serve's checks."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    import dspex

    lm = dspex.LM("openai/fake", api_base=api_base, cache=False)
    program = dspex.Predict("question -> answer")

    async def qa(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        return JSONResponse({"outputs": dict(await program.acall(question=body["question"], lm=lm))})

    return Starlette(routes=[Route("/qa", qa, methods=["POST"])])


def serve_peer(kind: str, port: int, api_base: str) -> None:
    import uvicorn

    app = dspy_app(api_base) if kind == "dspy" else bare_app(api_base)
    print(f"listening on http://127.0.0.1:{port} ", file=sys.stderr, flush=True)
    # the same uvicorn for all three (it picks httptools and uvloop when installed)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ----------------------------------------------------------------- the load generator
async def _client(host: str, port: int, path: str, cid: int, until: float, lat: list[float],
                  errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0
    try:
        while time.perf_counter() < until:
            n += 1
            body = json.dumps({"question": f"client {cid} question {n}: what is {cid}+{n}?"}).encode()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            t0 = time.perf_counter()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            status = int(head.split(b" ", 2)[1])
            if status == 200:
                lat.append(time.perf_counter() - t0)
            else:
                errors.append(status)
    finally:
        writer.close()


async def _load(url: str, path: str, clients: int, seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    # warm-up: every connection opened and used once before the clock starts
    warm_lat: list[float] = []
    warm_err: list[int] = []
    await asyncio.gather(*(_client(host, int(port), path, -1 - i, time.perf_counter() + 0.5, warm_lat, warm_err)
                           for i in range(min(clients, 64))))
    lat: list[float] = []
    errors: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), path, i, t0 + seconds, lat, errors) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    lat.sort()

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"ok": len(lat), "errors": len(errors), "error_codes": sorted(set(errors)), "rps": len(lat) / elapsed,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "elapsed_s": elapsed}


def load(url: str, path: str, clients: int, seconds: float) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    print(json.dumps(asyncio.run(_load(url, path, clients, seconds))))


# ----------------------------------------------------------------- orchestration
def _spawn(cmd: list[str], env: dict[str, str], cwd: str) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=cwd)


def _listening(p: subprocess.Popen[str], label: str) -> str:
    """The URL the service prints on stderr once it is bound."""
    assert p.stderr is not None
    while True:
        line = p.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on (http://[\d.]+:\d+)", line)
        if m:
            return m.group(1)
    p.kill()
    raise RuntimeError(f"{label} did not start: {p.stderr.read()[-2000:]}")



def _wait_ok(url: str, path: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.post(url + path, json={"question": "warm"}, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}{path} never answered 200")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_load(url: str, path: str, clients: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HERE), "--load", url, path, str(clients), str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(quick: bool) -> None:
    from dspex.testing import FakeLMServer

    seconds, rounds = (1.0, 1) if quick else (6.0, ROUNDS)
    levels = [64] if quick else [64, 256]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_POOL_STDERR": "quiet"}
    rows: list[tuple[str, int, dict[str, Any]]] = []
    with FakeLMServer.subprocess(latency=LATENCY) as fake, tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "serve.toml"
        cfg.write_text(f"""[serve]
port = 0
max_in_flight = 1024
[serve.lm]
model = "openai/fake"
api_base = "{fake.base_url}"
cache = false
[[serve.programs]]
name = "qa"
signature = "question -> answer"
""")
        services = [
            ("dspex serve", [sys.executable, "-m", "dspex.cli", "serve", str(cfg)], "/v1/programs/qa"),
            ("DSPy + FastAPI (asyncify)", [sys.executable, str(HERE), "--serve-peer", "dspy", str(_free_port()),
                                           fake.base_url], "/predict"),
            ("(floor) bare Starlette+Predict", [sys.executable, str(HERE), "--serve-peer", "bare", str(_free_port()),
                                                fake.base_url], "/qa"),
        ]
        running: list[tuple[str, subprocess.Popen[str], str, str]] = []
        try:
            procs = [(label, _spawn(cmd, env, tmp), path) for label, cmd, path in services]  # start in parallel
            for label, proc, path in procs:  # all up at once; the idle ones cost nothing
                running.append((label, proc, _listening(proc, label), path))
                _wait_ok(running[-1][2], path)
            for clients in levels:
                best: dict[str, dict[str, Any]] = {}
                for _ in range(rounds):  # rounds interleaved, so a busy moment of the machine hits all alike
                    for label, _proc, url, path in running:
                        r = _run_load(url, path, clients, seconds)
                        if label not in best or r["rps"] > best[label]["rps"]:
                            best[label] = r
                        print(f"  {label:<30} {clients:>4} clients: {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms"
                              f"  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", file=sys.stderr, flush=True)
                rows += [(label, clients, best[label]) for label, _, _ in services]
        finally:
            for _label, proc, _url, _path in running:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    by = {(label, c): r for label, c, r in rows}
    print(f"\nserving Predict('question -> answer') over HTTP, LM latency {LATENCY * 1000:.0f} ms, best of "
          f"{rounds} interleaved x {seconds:g} s per row, load from a separate process; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'clients':>7}  {'service':<32}{'req/s':>9}{'of ceiling':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for clients in levels:
        ceiling = clients / LATENCY
        for label, _, _ in services:
            r = by[(label, clients)]
            print(f"{clients:>7}  {label:<32}{r['rps']:>9.1f}{r['rps'] / ceiling:>11.0%} {r['p50_ms']:>8.1f}"
                  f"{r['p99_ms']:>9.1f}{r['errors']:>8}")
        ours, theirs, floor = (by[(label, clients)] for label, _, _ in services)
        print(f"{'':>7}  ratio dspex/DSPy: throughput {ours['rps'] / max(theirs['rps'], 1e-9):.1f}x, "
              f"p99 {theirs['p99_ms'] / max(ours['p99_ms'], 1e-9):.1f}x lower; dspex/floor "
              f"{ours['rps'] / max(floor['rps'], 1e-9):.2f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 clients only, one 1 s round (a sanity check)")
    ap.add_argument("--serve-peer", nargs=3, metavar=("KIND", "PORT", "API_BASE"), help=argparse.SUPPRESS)
    ap.add_argument("--load", nargs=4, metavar=("URL", "PATH", "CLIENTS", "SECONDS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_peer:
        serve_peer(a.serve_peer[0], int(a.serve_peer[1]), a.serve_peer[2])
    elif a.load:
        load(a.load[0], a.load[1], int(a.load[2]), float(a.load[3]))
    else:
        main(a.quick or os.environ.get("DSPEX_BENCH_QUICK") == "1")
