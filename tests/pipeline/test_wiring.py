"""Wiring checks before anything runs, Mermaid rendering, YAML round trip, allowlist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import dspex
from dspex.errors import PipelineError
from dspex.pipeline import Pipeline, branch, fan_out, native, parallel, pipeline, register, unregister, worker

from . import steps_for_tests as sft

pytestmark = pytest.mark.timeout(60)

MOD = sft.__name__  # "pipeline.steps_for_tests" or "tests.pipeline.steps_for_tests"


def test_miswired_pipeline_rejected_before_any_step_runs_all_problems_at_once() -> None:
    ran: list[str] = []

    def side_effect(x: int) -> int:
        ran.append("side_effect")  # proves nothing ran
        return x

    def wants_int(count: int) -> int:
        return count

    def makes_list(x: int) -> list[str]:
        return ["a"]

    def a(x: int) -> int:
        return x

    def b(x: int) -> int:
        return x

    p = pipeline(
        [
            native(side_effect, writes="y"),
            native(makes_list, writes="count"),  # list[str] ...
            native(wants_int, writes="n"),  # ... read as int: type mismatch
            native(lambda missing_field: 1, name="needs_missing", reads="missing_field", writes="m"),
            parallel([native(a, writes="same"), native(b, writes="same")], name="clash"),
            worker(handler="echo", pool="no_such_pool", reads=["x"], writes=["e"]),
            worker(handler="no_such_handler", pool="dspy", reads=["x"], writes=["h"]),
            branch("flag", then=native(a, writes="only_then")),
            native(lambda only_then: 1, name="after_branch", reads="only_then", writes="z"),
            fan_out(native(lambda p, q: 1, name="two_reads", reads=["p", "q"], writes="r"), over="y",
                    into="rs"),
        ],
        inputs=["x", "flag"],
    )
    with pytest.raises(PipelineError) as info:
        p.validate()
    problems = "\n".join(info.value.problems)
    assert "'wants_int' reads 'count' as int but it is written as list[str]" in problems
    assert "'needs_missing' reads 'missing_field' but no input or earlier step provides it" in problems
    assert "steps ['a', 'b'] all write 'same'" in problems
    assert "pool 'no_such_pool', which is not configured" in problems
    assert "handler 'no_such_handler', which pool 'dspy' does not have" in problems
    assert "only one arm of branch 'branch' writes" in problems
    assert "item=" in problems
    assert "maps over 'y', which is int, not a list" in problems
    assert len(info.value.problems) >= 8
    with pytest.raises(PipelineError):
        p.run(x=1, flag=True)
    assert ran == []


def test_missing_and_mistyped_inputs_reported_at_run() -> None:
    ran: list[int] = []

    def f(x: int, y: str) -> int:
        ran.append(x)
        return x

    p = pipeline([native(f, writes="z")])
    assert set(p.validate().required) == {"x", "y"}  # inputs unknown: listed, not errors
    with pytest.raises(PipelineError) as info:
        p.run(x="not an int")
    assert len(info.value.problems) == 2  # x mistyped and y missing, both at once
    assert ran == []


def test_handler_check_reads_handler_modules_statically() -> None:
    from dspex.pipeline.validation import handlers_in_module

    names = handlers_in_module("dspex.bridge.dspy_handlers")
    assert names is not None and "dspy.run" in names
    assert handlers_in_module("no.such.module") is None


def test_compatible_types() -> None:
    from typing import Literal, Optional

    from dspex.pipeline.validation import compatible

    assert compatible(int, float)
    assert compatible(list[str], list)
    assert compatible(list[str], Optional[list[str]])  # noqa: UP045
    assert compatible(list[str], list[str] | None)
    assert compatible(Literal["a", "b"], str)
    assert compatible(dict[str, Any], dict)
    assert not compatible(list[str], int)
    assert not compatible(list[int], list[str])
    assert not compatible(str, int)
    assert compatible(None, int) and compatible(int, None)


def test_unique_auto_names() -> None:
    def search(q: str) -> str:
        return q

    p = pipeline([parallel([native(search, writes="a"), native(search, writes="b")])])
    assert [s.name for s in p.steps[0].children()] == ["search", "search_2"]
    dup = pipeline([native(search, name="s", writes="a"), native(search, name="s", writes="b")])
    with pytest.raises(PipelineError, match="named 's'"):
        dup.validate()


def _demo_pipeline() -> Pipeline:
    return pipeline(
        [
            native(sft.make_queries, writes="queries", retries=2, backoff=0.01, timeout=5),
            fan_out(native(sft.shout, writes="loud"), over="queries", into="louder", concurrency=2),
            parallel([native(sft.count, writes="n"), native("question -> answer")], name="both",
                     concurrency=2),
            branch(sft.is_long, then=native(sft.summarize, writes="summary"),
                   otherwise=native(sft.keep, writes="summary"), reads="louder"),
            worker("dspy.ChainOfThought", signature="question, summary -> verdict: bool", pool="dspy",
                   name="judge"),
            native(dspex.Template("Q: {question}\nA: {answer}"), writes="text", cache=8),
        ],
        name="demo",
    )


def test_render_mermaid() -> None:
    text = _demo_pipeline().render()
    assert text.startswith("flowchart TD\n")
    assert 'subgraph p' in text and "parallel: both (max 2)" in text
    assert "fan_out: fan_out_louder over queries → louder (max 2)" in text
    assert ":::native" in text and ":::worker" in text
    assert "dspy.ChainOfThought @ dspy" in text
    assert '{"branch: is_long?"}' in text
    assert "-->|yes|" in text and "-->|no|" in text
    lines = [line.strip() for line in text.splitlines()]
    assert sum(line.startswith("subgraph ") for line in lines) == lines.count("end") == 2
    assert "classDef worker" in text


def test_yaml_round_trip_same_render_and_results(tmp_path: Path) -> None:
    from dspex.testing import DummyLM

    p = _demo_pipeline()
    path = p.save(tmp_path / "demo.yaml")
    text = path.read_text()
    assert f"{MOD}:make_queries" in text
    q = Pipeline.load(path, allow=[f"{MOD}:*"])
    assert q.render() == p.render()
    assert q.to_dict() == p.to_dict()
    # the same results (the worker step is left out: this test has no pool)
    lm = DummyLM()
    native_only = [s for s in p.steps if s.name != "judge"]
    loaded_native = [s for s in q.steps if s.name != "judge"]
    r1 = Pipeline(native_only).run(question="what is up", lm=lm)
    r2 = Pipeline(loaded_native).run(question="what is up", lm=lm)
    assert dict(r1) == dict(r2)
    assert r1["louder"] == ["WHAT", "IS", "UP"]
    # JSON works too
    jpath = p.save(tmp_path / "demo.json")
    assert Pipeline.load(jpath, allow=[f"{MOD}:*"]).render() == p.render()


def test_load_rejects_callables_not_allowed(tmp_path: Path) -> None:
    p = _demo_pipeline()
    path = p.save(tmp_path / "demo.yaml")
    with pytest.raises(PipelineError) as info:
        Pipeline.load(path)
    problems = "\n".join(info.value.problems)
    assert f"callable '{MOD}:make_queries' is not allowed" in problems
    assert f"allow=['{MOD}:make_queries']" in problems
    assert f"'{MOD}:*'" in problems
    assert f"{MOD}:is_long" in problems  # every one reported at once
    # a narrower allowlist still rejects the rest
    with pytest.raises(PipelineError) as info2:
        Pipeline.load(path, allow=[f"{MOD}:make_queries"])
    assert all("make_queries" not in p for p in info2.value.problems)
    # an attacker-chosen callable is refused even when importable
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - {type: native, call: 'os:system', reads: [x], writes: [y]}\n")
    with pytest.raises(PipelineError, match="'os:system' is not allowed"):
        Pipeline.load(bad)


def test_registry_names(tmp_path: Path) -> None:
    def local_fn(x: int) -> int:  # a local function: only savable through the registry
        return x + 1

    with pytest.raises(PipelineError, match="register it"):
        pipeline([native(local_fn, writes="y")]).save(tmp_path / "x.yaml")
    register("plus_one", local_fn)
    try:
        path = pipeline([native(local_fn, writes="y")]).save(tmp_path / "x.yaml")
        assert "call: plus_one" in path.read_text()
        assert Pipeline.load(path).run(x=1)["y"] == 2
    finally:
        unregister("plus_one")
    with pytest.raises(PipelineError, match="'plus_one' is not a registered name"):
        Pipeline.load(path)
