"""The DSPy bridge on Ray workers: the real DSPy 3.4.1 runs in the actors, against the
suite's FakeLMServer (loopback, reachable from every simulated node); host tools and
host metrics are called back from the actors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import dspex
from dspex.pool import RayPool
from dspex.testing import FakeLMServer

pytestmark = [pytest.mark.ray, pytest.mark.dspy, pytest.mark.timeout(240)]

pytest.importorskip("dspy")

ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DSPEX_DSPY_CACHE": "off",
       "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "bridge")}  # worker-side test metrics
TRAIN = [dspex.Example(question=f"What is {i}+{i}?", answer=str(2 * i)).with_inputs("question") for i in range(1, 4)]


@pytest.fixture(scope="module")
def dspy_ray(ray_cluster):
    pool = RayPool("dspy-ray", size=2, handlers=["dspex.bridge.dspy_handlers"], preload=["dspy"], env=ENV,
                   call_timeout_s=120, num_cpus=0.3, placement="spread", start_timeout_s=180)
    pool.start()
    try:
        yield pool
    finally:
        pool.close()


def lm_for(server: FakeLMServer) -> dspex.LM:
    return dspex.LM("openai/fake", api_base=server.base_url, cache=False, max_tokens=256, temperature=0.0,
                    num_retries=0)


def test_predict_on_ray_matches_dspy_in_process(fake_lm: FakeLMServer, dspy_ray: RayPool) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy

    reply = "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
    fake_lm.script([reply])
    pred = dspex.predict("question -> answer: int", {"question": "What is 2+2?"}, impl="dspy", lm=lm_for(fake_lm),
                         pool=dspy_ray)
    assert pred.answer == 4  # typed by DSPy in the actor, an int on arrival
    ray_msgs = [r["json"]["messages"] for r in fake_lm.requests]
    # The oracle: DSPy 3.4.1 in this process, same LM endpoint, cache off.
    fake_lm.clear_requests()
    fake_lm.script([reply])
    lm = dspy.LM("openai/fake", api_base=fake_lm.base_url, api_key="x", cache=False, max_tokens=256, temperature=0.0,
                 num_retries=0)
    with dspy.context(lm=lm):
        oracle = dspy.Predict("question -> answer: int")(question="What is 2+2?")
    assert oracle.answer == 4
    assert ray_msgs == [r["json"]["messages"] for r in fake_lm.requests]


def _step(thought: str, tool: str, args: dict) -> str:
    return (f"[[ ## next_thought ## ]]\n{thought}\n\n[[ ## next_tool_name ## ]]\n{tool}\n\n"
            f"[[ ## next_tool_args ## ]]\n{json.dumps(args)}\n\n[[ ## completed ## ]]")


def test_react_calls_a_host_tool_from_the_actor(fake_lm: FakeLMServer, dspy_ray: RayPool) -> None:
    calls: list[dict] = []
    host_pid = os.getpid()

    def lookup(topic: str, limit: int = 2) -> str:
        """Look a topic up in the solar system notes."""
        calls.append({"topic": topic, "limit": limit, "pid": os.getpid()})
        return f"{topic}: two moons, Phobos and Deimos"

    fake_lm.script([
        _step("Look it up.", "lookup", {"topic": "mars", "limit": 3}),
        _step("Done.", "finish", {}),
        "[[ ## reasoning ## ]]\nFrom the notes.\n\n[[ ## answer ## ]]\nPhobos and Deimos\n\n[[ ## completed ## ]]",
    ])
    agent = dspex.react("question -> answer", tools=[lookup], lm=lm_for(fake_lm), pool=dspy_ray, max_iters=4)
    try:
        pred = agent(question="What are the moons of Mars?")
    finally:
        agent.close()
    assert pred.answer == "Phobos and Deimos"
    assert calls == [{"topic": "mars", "limit": 3, "pid": host_pid}]  # ran here, typed by the hints
    assert pred.trajectory["observation_0"] == "mars: two moons, Phobos and Deimos"
    assert len(fake_lm.requests) == 3


def test_optimizer_on_ray_with_a_host_metric(fake_lm: FakeLMServer, dspy_ray: RayPool) -> None:
    seen: list[str] = []

    def metric(example: dspex.Example, prediction: dspex.Prediction) -> float:
        seen.append(example.question)
        return 1.0 if prediction.answer else 0.0

    events: list[dict] = []
    result = dspex.optimize(dspex.Predict("question -> answer"), TRAIN, optimizer="bootstrap", metric=metric,
                            lm=lm_for(fake_lm), pool=dspy_ray, progress=events.append,
                            max_bootstrapped_demos=1, max_labeled_demos=1)
    assert result.optimizer == "bootstrap" and result.state["demos"]
    assert result.metric_calls > 0 and len(seen) == result.metric_calls  # every metric call came back here
    assert result.lm_calls > 0 and len(fake_lm.requests) >= result.lm_calls
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    # The optimized state serves natively (the DSPy JSON shape).
    native = dspex.Predict("question -> answer")
    native.load_state(result.state)
    assert native(question="What is 5+5?", lm=lm_for(fake_lm)).answer


def test_worker_metric_module_and_a_session_module(fake_lm: FakeLMServer, dspy_ray: RayPool) -> None:
    """A worker-side metric ("module:function" imported in the actor) and a stateful module in a session."""
    result = dspex.optimize(dspex.Predict("question -> answer"), TRAIN, optimizer="labeled",
                            metric="bridge_test_metrics:lenient", lm=lm_for(fake_lm), pool=dspy_ray, k=2)
    assert len(result.state["demos"]) == 2
    mod = dspex.predictor("predict", "question -> answer", impl="dspy", lm=lm_for(fake_lm), pool=dspy_ray)
    try:
        fake_lm.script(["[[ ## answer ## ]]\n6\n\n[[ ## completed ## ]]"] * 2)
        assert mod(question="What is 3+3?").answer == "6"
        assert mod(question="What is 3+3?").answer == "6"
    finally:
        mod.close()
