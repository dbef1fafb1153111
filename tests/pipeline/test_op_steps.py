"""op() steps: API operations routed and dispatched like the API call, saved and loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

import dspex
from dspex.errors import PipelineError
from dspex.pipeline import OpStep, Pipeline, op, worker

pytestmark = pytest.mark.timeout(60)


def test_native_retrieve_step_returns_what_the_api_returns() -> None:
    step = op("retrieve", source="bm25:solar_system", k=3, reads={"query": "question"})
    out = Pipeline([step]).run(question="moons of mars")
    assert out["passages"] == dspex.retrieve("moons of mars", k=3, source="bm25:solar_system")
    assert step.where() == "native" and out.trace.steps[0].where == "native"


def test_op_step_round_trips_through_a_file(tmp_path: Path) -> None:
    p = Pipeline([op("retrieve", source="bm25:solar_system", k=2, reads={"query": "question"}, writes="hits")])
    p.save(tmp_path / "p.yaml")
    q = Pipeline.load(tmp_path / "p.yaml")
    (step,) = q.steps
    assert isinstance(step, OpStep) and step.arguments == {"source": "bm25:solar_system", "k": 2}
    assert q.run(question="moons of mars")["hits"] == p.run(question="moons of mars")["hits"]


def test_bad_op_steps_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="one of retrieve, optimize"):
        op("summarize")
    with pytest.raises(PipelineError, match="reads one field"):
        op("retrieve", reads=["a", "b"])
    with pytest.raises(PipelineError, match="cannot be saved"):
        Pipeline([op("retrieve", source=["a passage", "another"], k=1)]).save(tmp_path / "x.yaml")

    def tool(x: str) -> str:
        return x

    with pytest.raises(PipelineError, match="tools"):
        Pipeline([worker("dspy.ReAct", signature="question -> answer", tools=[tool])]).save(tmp_path / "y.yaml")
