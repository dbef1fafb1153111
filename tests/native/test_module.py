"""dspex.Module against dspy.Module (DSPy 3.4.1) in the same run: a multi-hop program with
retrieval sends the same prompts and gives the same outputs; save/load works both ways;
named predictors, sub-modules, deepcopy, reset, usage and trace behave as DSPy's."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

import dspex
from dspex.native.module import native_reason
from dspex.testing import FakeLMServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
dspy = pytest.importorskip("dspy")
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

pytestmark = pytest.mark.timeout(60)

CORPUS = [
    "Mars is the fourth planet from the Sun.",
    "Jupiter is the largest planet in the Solar System.",
    "The Moon orbits the Earth every 27 days.",
    "Saturn has the most spectacular rings.",
]
_BM25 = dspex.BM25(CORPUS)


def search(query: str, k: int = 2) -> list[str]:
    return [hit["text"] for hit in _BM25.search(query, k)]


class MultiHop(dspex.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = dspex.Predict("question -> query")
        self.answer = dspex.ChainOfThought("context: list[str], question -> answer")

    def forward(self, question: str) -> dspex.Prediction:
        q = self.query(question=question).query
        return self.answer(context=search(q) + search(question), question=question)


class DspyMultiHop(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = dspy.Predict("question -> query")
        self.answer = dspy.ChainOfThought("context: list[str], question -> answer")

    def forward(self, question: str) -> Any:
        q = self.query(question=question).query
        return self.answer(context=search(q) + search(question), question=question)


def dspex_lm(server: FakeLMServer) -> dspex.LM:
    return dspex.LM("openai/fake", api_base=server.base_url, cache=False, num_retries=0)


def dspy_lm(server: FakeLMServer) -> Any:
    return dspy.LM("openai/fake", api_base=server.base_url, api_key="x", cache=False, num_retries=0)


def messages(server: FakeLMServer) -> list[Any]:
    return [r["json"]["messages"] for r in server.requests]


def scripted(server: FakeLMServer) -> None:
    server.script([
        "[[ ## query ## ]]\nlargest planet\n\n[[ ## completed ## ]]",
        "[[ ## reasoning ## ]]\nThe context says so.\n\n[[ ## answer ## ]]\nJupiter\n\n[[ ## completed ## ]]",
    ])


DEMOS = {
    "query": [{"question": "Which planet is red?", "query": "red planet"}],
    "answer.predict": [dspex.Example(context=["Mars is red."], question="Which planet is red?",
                                     reasoning="Mars is red.", answer="Mars")],
}


def with_demos(prog: Any) -> Any:
    for name, p in prog.named_predictors():
        p.demos = list(DEMOS[name])
    prog.query.signature = prog.query.signature.with_instructions("Write a search query.")
    return prog


def test_multi_hop_same_prompts_and_outputs_as_dspy(fake_lm: FakeLMServer) -> None:
    scripted(fake_lm)
    with dspy.context(lm=dspy_lm(fake_lm)):
        theirs = DspyMultiHop()(question="Which is the largest planet?")
    their_msgs = messages(fake_lm)
    fake_lm.reset()
    scripted(fake_lm)
    with dspex.context(lm=dspex_lm(fake_lm)):
        ours = MultiHop()(question="Which is the largest planet?")
    our_msgs = messages(fake_lm)
    assert len(our_msgs) == len(their_msgs) == 2
    assert our_msgs == their_msgs
    assert dict(ours.items()) == dict(theirs.items()) == {"reasoning": "The context says so.", "answer": "Jupiter"}


def test_usage_and_trace_per_call(fake_lm: FakeLMServer) -> None:
    prog = MultiHop()
    lm = dspex_lm(fake_lm)
    with dspex.context(lm=lm) as recorded:
        first = prog(question="Which is the largest planet?")
    with dspex.context(lm=lm):
        second = prog(question="What orbits the Earth?")
    trace = first.get_trace()
    assert [p for p, _, _ in trace] == [prog.query, prog.answer.predict]
    assert trace[0][1] == {"question": "Which is the largest planet?"}
    assert "context" in trace[1][1] and trace[1][2] is first
    usage = first.get_lm_usage()["openai/fake"]
    assert recorded.calls == 2
    assert usage["total_tokens"] == recorded.total_tokens > trace[0][2].get_lm_usage()["openai/fake"]["total_tokens"]
    assert second.get_trace()[0][1] == {"question": "What orbits the Earth?"}  # its own trace only


def test_acall_runs_aforward(fake_lm: FakeLMServer) -> None:
    class AsyncHop(MultiHop):
        async def aforward(self, question: str) -> dspex.Prediction:
            q = (await self.query.acall(question=question)).query
            return await self.answer.acall(context=search(q), question=question)

    prog = AsyncHop()
    pred = asyncio.run(_acall(prog, fake_lm))
    assert pred.answer and len(pred.get_trace()) == 2
    assert len(fake_lm.requests) == 2


async def _acall(prog: Any, server: FakeLMServer) -> Any:
    with dspex.context(lm=dspex_lm(server)):
        return await prog.acall(question="Which is the largest planet?")


def test_save_dspex_load_dspy_same_prompts(tmp_path: Any) -> None:
    path = tmp_path / "prog.json"
    ours = with_demos(MultiHop())
    ours.save(path)
    theirs = DspyMultiHop()
    theirs.load(str(path))
    assert set(json.loads(path.read_text())) == {"query", "answer.predict", "metadata"}
    for (n1, p1), (n2, p2) in zip(ours.named_predictors(), theirs.named_predictors(), strict=True):
        assert n1 == n2
        inputs = {"question": "Which is the largest planet?", "context": ["a", "b"]}
        inputs = {k: v for k, v in inputs.items() if k in p1.signature.input_fields}
        assert dspex.ChatAdapter().format(p1.signature, demos=p1.demos, inputs=inputs) == \
            dspy.ChatAdapter().format(p2.signature, p2.demos, inputs)


def test_save_dspy_load_dspex_same_prompts(tmp_path: Any) -> None:
    path = tmp_path / "dspy.json"
    theirs = DspyMultiHop()
    theirs.query.demos = [dspy.Example(question="Which planet is red?", query="red planet")]
    theirs.answer.predict.demos = [dspy.Example(context=["Mars is red."], question="Which planet is red?",
                                                reasoning="Mars is red.", answer="Mars")]
    theirs.answer.predict.signature = theirs.answer.predict.signature.with_instructions("Answer from the context.")
    theirs.save(str(path))
    ours = MultiHop().load(path)
    assert ours.answer.predict.instructions == "Answer from the context."
    for (_, p1), (_, p2) in zip(ours.named_predictors(), theirs.named_predictors(), strict=True):
        inputs = {k: "x" for k in p1.signature.input_fields}
        assert dspex.ChatAdapter().format(p1.signature, demos=p1.demos, inputs=inputs) == \
            dspy.ChatAdapter().format(p2.signature, p2.demos, inputs)
    # and the file dspex writes back is the one DSPy wrote (metadata aside)
    again = tmp_path / "again.json"
    ours.save(again)
    a, b = json.loads(path.read_text()), json.loads(again.read_text())
    a.pop("metadata"), b.pop("metadata")
    assert a == b


def test_load_state_names_missing_predictors(tmp_path: Any) -> None:
    with pytest.raises(dspex.ConfigError, match=r"answer\.predict"):
        MultiHop().load_state({"query": MultiHop().query.dump_state()})


class Nested(dspex.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hops = [dspex.Predict("q -> a"), dspex.ChainOfThought("q -> a")]
        self.tools = {"x": dspex.Predict("q -> b")}
        self.inner = MultiHop()
        self.alias = self.hops[0]  # the same predictor twice: listed once, by its first path
        self.frozen = MultiHop()
        self.frozen._compiled = True


class DspyNested(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hops = [dspy.Predict("q -> a"), dspy.ChainOfThought("q -> a")]
        self.tools = {"x": dspy.Predict("q -> b")}
        self.inner = DspyMultiHop()
        self.alias = self.hops[0]
        self.frozen = DspyMultiHop()
        self.frozen._compiled = True


def test_names_match_dspy() -> None:
    ours, theirs = Nested(), DspyNested()
    assert [n for n, _ in ours.named_predictors()] == [n for n, _ in theirs.named_predictors()]
    assert len(ours.parameters()) == len(theirs.parameters()) == len(ours.predictors())
    ours_sub = [n for n, _ in ours.named_sub_modules()]
    theirs_sub = [n for n, _ in theirs.named_sub_modules()]
    assert ours_sub == theirs_sub
    assert [n for n, _ in ours.named_sub_modules(skip_compiled=True)] == \
        [n for n, _ in theirs.named_sub_modules(skip_compiled=True)]
    assert set(ours.dump_state()) == set(theirs.dump_state())


def test_deepcopy_reset_copy_reset() -> None:
    prog = with_demos(MultiHop())
    lm = dspex.LM("openai/fake", api_base="http://127.0.0.1:9/v1")
    prog.set_lm(lm)
    copy = prog.deepcopy()
    assert type(copy) is MultiHop and copy.query is not prog.query
    assert copy.query.lm is lm  # LMs are clients: shared, not copied (a copy would lose its key)
    copy.query.demos.append({"question": "q", "query": "x"})
    assert len(prog.query.demos) == 1 and len(copy.query.demos) == 2
    fresh = prog.reset_copy()
    assert all(p.demos == [] and p.lm is None for p in fresh.predictors())
    assert len(prog.query.demos) == 1 and prog.query.lm is lm
    assert fresh.query.instructions == "Write a search query."  # reset keeps the signature, as DSPy
    prog.reset()
    assert all(p.demos == [] and p.lm is None for p in prog.predictors())
    # single predictors have the same API
    p = dspex.Predict("q -> a", demos=[{"q": "1", "a": "2"}])
    assert p.parameters() == [p] and p.named_predictors() == [("self", p)]
    assert p.reset_copy().demos == [] and p.demos


def test_dspy_reset_copy_agrees() -> None:
    theirs = DspyMultiHop()
    theirs.query.demos = [dspy.Example(question="a", query="b")]
    assert theirs.reset_copy().query.demos == []
    ours = with_demos(MultiHop())
    assert ours.reset_copy().query.demos == []


def test_native_reason() -> None:
    assert native_reason(MultiHop()) is None

    class WithDspy(MultiHop):
        def __init__(self) -> None:
            super().__init__()
            self.extra = dspy.Predict("q -> a")

    why = native_reason(WithDspy())
    assert why is not None and "extra" in why and "DSPy" in why

    class WithImage(dspex.Module):
        def __init__(self) -> None:
            self.see = dspex.Predict(dspex.signature({"image": (dspy.Image, dspex.InputField()),
                                                      "caption": (str, dspex.OutputField())}))

    why = native_reason(WithImage())
    assert why is not None and "'see'" in why and "image" in why
    assert "no dspex predictors" in (native_reason(dspex.Module()) or "")


def test_batch_in_input_order_each_with_its_own_trace(fake_lm: FakeLMServer) -> None:
    prog = MultiHop()
    questions = ["Which is the largest planet?", "Which planet is red?", "What orbits the Earth?"]
    examples = [{"question": questions[0]}, dspex.Example(question=questions[1], answer="x").with_inputs("question"),
                {"question": questions[2]}]
    with dspex.context(lm=dspex_lm(fake_lm)):
        preds = prog.batch(examples, concurrency=3)
        apreds = asyncio.run(prog.abatch(examples, concurrency=2))
    for pred, q in zip(preds + apreds, questions * 2, strict=True):
        assert pred.get_trace()[0][1] == {"question": q} and len(pred.get_trace()) == 2
    with dspex.context(lm=dspex_lm(fake_lm)):
        out = prog.batch([{"question": "q"}, {"nope": 1}], return_exceptions=True)
    assert isinstance(out[1], TypeError) and "nope" in str(out[1]) and out[0].answer


def test_nested_modules_count_usage_once(fake_lm: FakeLMServer) -> None:
    class Outer(dspex.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = MultiHop()
            self.check = dspex.Predict("answer -> verdict")

        def forward(self, question: str) -> dspex.Prediction:
            inner = self.inner(question=question)  # its Prediction carries the inner total
            assert len(inner.get_trace()) == 2
            self.check(answer=inner.answer)
            return inner  # returned again: the outer total must not count the inner twice

    with dspex.context(lm=dspex_lm(fake_lm)) as recorded:
        pred = Outer()(question="Which is the largest planet?")
    assert recorded.calls == 3 and len(pred.get_trace()) == 3
    assert pred.get_lm_usage()["openai/fake"]["total_tokens"] == recorded.total_tokens
