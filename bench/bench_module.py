"""Composite programs: dspex.Module vs dspy.Module (DSPy 3.4.1), side by side in one run.

    python bench/bench_module.py [--quick]

Rows: a Predict call with an instant in-process LM (input checks on and off: what the
checks cost), a 2-predictor program with BM25 retrieval (instant LM), deepcopy, save+load
of the program's JSON state, and the same program run natively vs whole in a DSPy worker
(``dspy.program``) against the loopback fake LM server. Per-call times are the median of
several rounds; the bench checks both sides give the same outputs before timing.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DSPEX_DSPY_CACHE", "off")

import dspex
from dspex.testing import DummyLM, FakeLMServer

QUICK = "--quick" in sys.argv or os.environ.get("DSPEX_BENCH_QUICK") == "1"
ROUNDS = 2 if QUICK else 7  # quick: a smoke run of every row (dspex bench --quick runs all benches in ~4 min)
CORPUS = ["Mars is the fourth planet.", "Jupiter is the largest planet.", "The Moon orbits the Earth."]
BM25 = dspex.BM25(CORPUS)
ANSWER = {"query": "largest planet", "reasoning": "It says so.", "answer": "Jupiter"}


def search(q: str) -> list[str]:
    return [h["text"] for h in BM25.search(q, 2)]


class MultiHop(dspex.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = dspex.Predict("question -> query")
        self.answer = dspex.ChainOfThought("context: list[str], question -> answer")

    def forward(self, question: str) -> Any:
        return self.answer(context=search(self.query(question=question).query), question=question)


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    fn()
    out = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)


def fmt(us: float) -> str:
    return f"{us / 1e3:.2f} ms" if us >= 1000 else f"{us:.1f} µs"


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dspy
        from dspy.utils import DummyLM as DspyDummy
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

    class DspyMultiHop(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = dspy.Predict("question -> query")
            self.answer = dspy.ChainOfThought("context: list[str], question -> answer")

        def forward(self, question: str) -> Any:
            return self.answer(context=search(self.query(question=question).query), question=question)

    n, n2 = (80, 8) if QUICK else (2000, 200)
    rows: list[tuple[str, float, float | None]] = []
    q = "Which is the largest planet?"

    ours_lm = DummyLM([ANSWER] * (4 * n * (ROUNDS + 2)))
    theirs_lm = DspyDummy([ANSWER] * (4 * n2 * (ROUNDS + 2)))
    p_on, p_off = dspex.Predict("question -> answer"), dspex.Predict("question -> answer", check_inputs="off")
    p_d = dspy.Predict("question -> answer")
    assert p_on(question=q, lm=ours_lm).answer == p_d(question=q, lm=theirs_lm).answer == "Jupiter"
    d_us = per_call_us(lambda: p_d(question=q, lm=theirs_lm), n2)
    rows.append(("Predict call, instant LM (input checks on)", per_call_us(lambda: p_on(question=q, lm=ours_lm), n), d_us))
    rows.append(("Predict call, instant LM (check_inputs='off')",
                 per_call_us(lambda: p_off(question=q, lm=ours_lm), n), d_us))

    ours, theirs = MultiHop(), DspyMultiHop()
    with dspex.context(lm=ours_lm), dspy.context(lm=theirs_lm):
        assert dict(ours(question=q).items()) == dict(theirs(question=q).items())
        rows.append(("2-predictor Module + BM25, instant LM", per_call_us(lambda: ours(question=q), n // 2),
                     per_call_us(lambda: theirs(question=q), n2 // 2)))
    rows.append(("Module.deepcopy()", per_call_us(ours.deepcopy, n), per_call_us(theirs.deepcopy, n2)))
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "p.json")

        def ours_io() -> None:
            ours.save(path)
            MultiHop().load(path)

        def theirs_io() -> None:
            theirs.save(path)
            DspyMultiHop().load(path)

        rows.append(("save + load program JSON", per_call_us(ours_io, n // 4), per_call_us(theirs_io, n2 // 2)))

    # Where the router can send it: in-process vs the whole program in a DSPy worker.
    from dspex.api import run_program
    from dspex.pool.pool import Pool

    server = FakeLMServer()
    server.start()
    pool = Pool("bench-module", size=1, handlers=["dspex.bridge.dspy_handlers"], preload=["dspy"],
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off"})
    pool.start()
    try:
        lm = dspex.LM("openai/fake", api_base=server.base_url, cache=False, num_retries=0)
        native = per_call_us(lambda: run_program(ours, lm=lm, question=q), n // 20)
        worker = per_call_us(lambda: run_program(ours, impl="dspy", pool=pool, lm=lm, question=q), n2 // 4)
        rows.append(("same program over loopback HTTP: native vs whole in a DSPy worker", native, worker))
    finally:
        pool.close()
        server.stop()

    print(f"{'operation':<70}{'dspex':>12}{'DSPy 3.4.1':>14}{'DSPy/dspex':>12}")
    for name, a, b in rows:
        ratio = f"{b / a:.1f}x" if b else ""
        print(f"{name:<70}{fmt(a):>12}{fmt(b) if b else '':>14}{ratio:>12}")


if __name__ == "__main__":
    main()
