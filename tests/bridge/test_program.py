"""Composite programs (dspex.Module) routed by the router: natively when every predictor
can run in-process, else the whole program in a DSPy worker (``dspy.program``). The same
program run both ways sends the same prompts."""

from __future__ import annotations

import os
from typing import Any

import pytest

import dspex
from dspex.api._module import explain_program, run_program
from dspex.testing import FakeLMServer

from .conftest import lm_for

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
dspy = pytest.importorskip("dspy")

pytestmark = pytest.mark.timeout(120)

_BM25 = dspex.BM25(["Jupiter is the largest planet.", "Mars is red.", "The Moon orbits the Earth."])


class TwoStage(dspex.Module):
    """Defined in a test module the worker cannot import: it travels by value."""

    def __init__(self) -> None:
        super().__init__()
        self.query = dspex.Predict("question -> query")
        self.answer = dspex.ChainOfThought("context: list[str], question -> answer")

    def forward(self, question: str) -> Any:
        q = self.query(question=question).query
        return self.answer(context=[h["text"] for h in _BM25.search(q, 2)], question=question)


class WithDspyPart(TwoStage):
    def __init__(self) -> None:
        super().__init__()
        self.polish = dspy.Predict("answer -> final")  # a DSPy object: only a worker can run it

    def forward(self, question: str) -> Any:
        return self.polish(answer=super().forward(question).answer)


def _messages(server: FakeLMServer) -> list[Any]:
    return [r["json"]["messages"] for r in server.requests]


def test_native_program_runs_natively_and_the_same_in_a_worker(fake_lm: FakeLMServer, dspy_pool: Any) -> None:
    prog = TwoStage()
    prog.query.demos = [{"question": "Which planet is red?", "query": "red planet"}]
    d = explain_program(prog)
    assert d.impl == "native", d
    native = run_program(prog, lm=lm_for(fake_lm), question="Which is the largest planet?")
    native_msgs = _messages(fake_lm)
    fake_lm.reset()
    assert explain_program(prog, impl="dspy").impl == "dspy"
    remote = run_program(prog, impl="dspy", pool=dspy_pool, lm=lm_for(fake_lm), question="Which is the largest planet?")
    assert _messages(fake_lm) == native_msgs and len(native_msgs) == 2
    assert dict(remote.items()) == dict(native.items())
    assert remote.get_lm_usage()  # usage comes back from the worker


def test_program_with_a_dspy_part_runs_whole_in_a_worker(fake_lm: FakeLMServer, dspy_pool: Any) -> None:
    prog = WithDspyPart()
    d = explain_program(prog)
    assert d.impl == "dspy" and "polish" in d.reason, d
    pred = run_program(prog, pool=dspy_pool, lm=lm_for(fake_lm), question="Which is the largest planet?")
    assert isinstance(pred.final, str) and len(fake_lm.requests) == 3
    with pytest.raises(dspex.ImplementationUnavailable, match="polish"):
        run_program(prog, impl="native", question="q")


def test_unpicklable_program_says_what_to_do(dspy_pool: Any, fake_lm: FakeLMServer) -> None:
    import threading

    prog = WithDspyPart()
    prog.lock = threading.Lock()
    with pytest.raises(dspex.ImplementationUnavailable, match="cannot be shipped"):
        run_program(prog, pool=dspy_pool, lm=lm_for(fake_lm), question="q")
