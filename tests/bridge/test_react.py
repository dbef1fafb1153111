"""ReAct in a worker with host tools called back through the pool."""

from __future__ import annotations

import json

import pytest

import dspex
from dspex.testing import FakeLMServer

from .conftest import lm_for

pytestmark = pytest.mark.timeout(120)


def _step(thought: str, tool: str, args: dict) -> str:
    return (
        f"[[ ## next_thought ## ]]\n{thought}\n\n[[ ## next_tool_name ## ]]\n{tool}\n\n"
        f"[[ ## next_tool_args ## ]]\n{json.dumps(args)}\n\n[[ ## completed ## ]]"
    )


def test_react_with_host_tools_one_raising(fake_lm: FakeLMServer, dspy_pool) -> None:
    calls: list[tuple[str, dict]] = []

    def lookup(topic: str, limit: int = 2) -> str:
        """Look a topic up in the solar system notes."""
        calls.append(("lookup", {"topic": topic, "limit": limit}))
        return f"{topic}: two moons, Phobos and Deimos"

    def broken(x: int) -> str:
        """A tool that always fails."""
        calls.append(("broken", {"x": x}))
        raise ValueError(f"sensor {x} offline")

    fake_lm.script(
        [
            _step("Look it up.", "lookup", {"topic": "mars", "limit": 3}),
            _step("Try the sensor.", "broken", {"x": 7}),
            _step("Done.", "finish", {}),
            "[[ ## reasoning ## ]]\nFrom the notes.\n\n[[ ## answer ## ]]\nPhobos and Deimos\n\n[[ ## completed ## ]]",
        ]
    )
    agent = dspex.react("question -> answer", tools=[lookup, broken], lm=lm_for(fake_lm), pool=dspy_pool, max_iters=5)
    try:
        pred = agent(question="What are the moons of Mars?")
    finally:
        agent.close()

    assert pred.answer == "Phobos and Deimos"
    # The tools ran in this (host) process, with the LM's arguments, typed by the hints.
    assert calls == [("lookup", {"topic": "mars", "limit": 3}), ("broken", {"x": 7})]
    traj = pred.trajectory
    assert traj["tool_name_0"] == "lookup" and traj["tool_args_0"] == {"topic": "mars", "limit": 3}
    assert traj["observation_0"] == "mars: two moons, Phobos and Deimos"
    # The raising tool's error is an observation, the way DSPy's ReAct reports it.
    assert traj["observation_1"].startswith("Execution error in broken:")
    assert "sensor 7 offline" in traj["observation_1"]
    assert traj["tool_name_2"] == "finish"
    # The prompt described the host tools (name, docstring, argument schema).
    system = fake_lm.requests[0]["json"]["messages"][0]["content"]
    assert "lookup, whose description is <desc>Look a topic up in the solar system notes.</desc>" in system
    assert "'limit': {'type': 'integer', 'default': 2}" in system
    assert len(fake_lm.requests) == 4


def test_react_prompt_matches_in_process_dspy(fake_lm: FakeLMServer, dspy_pool) -> None:
    """The worker's ReAct (tools rebuilt from specs) prompts exactly like DSPy with the real functions."""
    import dspy

    def lookup(topic: str, limit: int = 2) -> str:
        """Look a topic up."""
        return topic

    lm = lm_for(fake_lm)
    finish = _step("Done.", "finish", {})
    extract = "[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\nok\n\n[[ ## completed ## ]]"
    fake_lm.script([finish, extract])
    agent = dspex.react("question -> answer", tools=[lookup], lm=lm, pool=dspy_pool, max_iters=3)
    try:
        agent(question="q?")
    finally:
        agent.close()
    worker_msgs = [r["json"]["messages"] for r in fake_lm.requests]

    fake_lm.clear_requests()
    fake_lm.script([finish, extract])
    dlm = dspy.LM("hosted_vllm/fake", api_base=fake_lm.base_url, api_key="x", cache=False, max_tokens=256,
                  temperature=0.0, num_retries=0)
    with dspy.context(lm=dlm):
        dspy.ReAct("question -> answer", tools=[lookup], max_iters=3)(question="q?")
    local_msgs = [r["json"]["messages"] for r in fake_lm.requests]
    assert worker_msgs == local_msgs


def test_react_explain_is_dspy_only() -> None:
    d = dspex.explain("react", "question -> answer")
    assert d.impl == "dspy"
    assert "no native implementation of react" in d.alternatives["native"]
