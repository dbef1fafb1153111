"""The seed's mixed pipeline: a native signature step, DSPy ChainOfThought in a worker
(the bridge's dspy.run with the run's session), a native formatter; against the fake
LM server. Also: usage and cost in the trace, YAML round trip with a worker step."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspex
from dspex.pipeline import Pipeline, native, parallel, worker
from dspex.pool import Pool
from dspex.testing import FakeLMServer

pytestmark = [pytest.mark.timeout(120), pytest.mark.dspy]

ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off"}


@pytest.fixture(scope="module")
def dspy_pool() -> Iterator[Pool]:
    with Pool("pipe-dspy", 1, handlers=["dspex.bridge.dspy_handlers"], preload=["dspy"], env=ENV,
              call_timeout_s=60) as pool:
        yield pool


def chat(**fields: object) -> str:
    """A reply in ChatAdapter format."""
    parts = [f"[[ ## {k} ## ]]\n{v if isinstance(v, str) else json.dumps(v)}" for k, v in fields.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def _lm(server: FakeLMServer) -> dspex.LM:
    return dspex.LM("openai/fake", api_base=server.base_url, cache=False, num_retries=0, temperature=0.0)


def to_markdown(question: str, refined_queries: list[str], answer: str) -> str:
    items = "\n".join(f"- {q}" for q in refined_queries)
    return f"## {question}\n\n{answer}\n\n### Queries\n{items}\n"


def _pipeline(pool: Pool) -> Pipeline:
    return Pipeline(
        [
            native("question -> search_queries: list[str]", name="plan"),
            worker("dspy.ChainOfThought", signature="search_queries -> refined_queries: list[str]",
                   pool="pipe-dspy", name="refine"),
            parallel(
                [
                    worker("dspy.Predict", signature="question, refined_queries -> answer", pool="pipe-dspy",
                           name="answer"),
                    native("question -> topic", name="topic"),
                ],
                name="both",
            ),
            native(to_markdown, writes="markdown"),
        ],
        pools={"pipe-dspy": pool},
        name="seed",
    )


def test_mixed_native_and_dspy_worker_pipeline(dspy_pool: Pool, fake_lm: FakeLMServer) -> None:
    fake_lm.script(
        [
            chat(search_queries=["dspy pipelines", "worker pools"]),
            chat(reasoning="narrow them", refined_queries=["dspy pipeline composition"]),
        ]
    )
    p = _pipeline(dspy_pool)
    p.validate(["question"])
    r = p.run(question="How do pipelines mix native and DSPy?", lm=_lm(fake_lm))
    assert r["search_queries"] == ["dspy pipelines", "worker pools"]  # typed: a list
    assert r["refined_queries"] == ["dspy pipeline composition"]
    assert r["reasoning"] == "narrow them"
    assert r["answer"] and r["topic"]
    assert r["markdown"].startswith("## How do pipelines mix native and DSPy?")
    refine = r.trace.step("refine")
    assert refine.where == "pipe-dspy" and refine.pid in dspy_pool.workers()
    assert refine.usage.get("prompt_tokens", 0) > 0  # from the bridge's reported usage
    plan = r.trace.step("plan")
    assert plan.where == "native" and plan.usage["calls"] == 1
    assert r.trace.usage["calls"] >= 4
    # every request reached the fake server: 2 native + 2 in the worker
    assert len(fake_lm.requests) == 4


def test_worker_dspy_step_round_trips_through_yaml(dspy_pool: Pool, fake_lm: FakeLMServer, tmp_path: Path) -> None:
    p = _pipeline(dspy_pool)
    path = p.save(tmp_path / "seed.yaml")
    q = Pipeline.load(path, allow=[f"{__name__}:*"], pools={"pipe-dspy": dspy_pool})
    assert q.render() == p.render()
    lm = _lm(fake_lm)
    r1 = p.run(question="q?", lm=lm)
    r2 = q.run(question="q?", lm=lm)
    assert dict(r1) == dict(r2)  # autofilled replies are deterministic


def test_program_state_file_is_used_when_present(dspy_pool: Pool, fake_lm: FakeLMServer, tmp_path: Path) -> None:
    state_file = tmp_path / "program.json"
    step = worker("dspy.Predict", signature="question -> answer", pool="pipe-dspy", state=str(state_file))
    p = Pipeline([step], pools={"pipe-dspy": dspy_pool})
    lm = _lm(fake_lm)
    p.run(question="first", lm=lm)  # no file yet: the module as built
    assert "Be terse and exact." not in str(fake_lm.requests[-1])
    predictor = dspex.Predict("question -> answer", instructions="Be terse and exact.")
    predictor.save(state_file)
    p.run(question="second", lm=lm)
    assert "Be terse and exact." in str(fake_lm.requests[-1])
