"""Native vs DSPy-in-a-worker: same LM replies -> same requests and same results.

Each case scripts the FakeLMServer with the same reply twice, runs the call with
impl="native" then impl="dspy" (DSPy 3.4.1 in a pool worker), and compares the
messages both sent and the predictions both returned (types included).
"""

from __future__ import annotations

import pytest

import dspex
from dspex.testing import FakeLMServer

from .conftest import lm_for

pytestmark = pytest.mark.timeout(120)


class Answer(dspex.Signature):
    """Answer the question using the context."""

    context: list[str] = dspex.InputField(desc="facts to use")
    question: str = dspex.InputField()
    answer: str = dspex.OutputField(desc="a short answer")
    confidence: float = dspex.OutputField()


CASES = [
    ("question -> answer: int", {"question": "6*7?"}, "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"),
    (
        "context: list[str], question -> answer, sources: list[str]",
        {"context": ["Mars has two moons.", "Phobos is the larger."], "question": "Moons of Mars?"},
        '[[ ## answer ## ]]\nPhobos and Deimos\n\n[[ ## sources ## ]]\n["a", "b"]\n\n[[ ## completed ## ]]',
    ),
    (
        "claim -> verdict: bool, label: Literal['true', 'false']",
        {"claim": "Venus is hot"},
        "[[ ## verdict ## ]]\nTrue\n\n[[ ## label ## ]]\ntrue\n\n[[ ## completed ## ]]",
    ),
    (
        Answer,
        {"context": ["Olympus Mons is 22 km high."], "question": "How high is Olympus Mons?"},
        "[[ ## answer ## ]]\n22 km\n\n[[ ## confidence ## ]]\n0.9\n\n[[ ## completed ## ]]",
    ),
]


def _both(fake_lm: FakeLMServer, dspy_pool: object, call: object) -> tuple[object, object, list, list]:
    """Run ``call(impl)`` native then dspy with the same scripted reply; return results + messages."""
    out = {}
    msgs = {}
    for impl in ("native", "dspy"):
        fake_lm.clear_requests()
        out[impl] = call(impl)  # type: ignore[operator]
        msgs[impl] = [r["json"]["messages"] for r in fake_lm.requests]
    return out["native"], out["dspy"], msgs["native"], msgs["dspy"]


@pytest.mark.parametrize("spec,inputs,reply", CASES, ids=["int", "lists", "bool-literal", "class"])
def test_predict_same_requests_and_results(fake_lm: FakeLMServer, dspy_pool, spec, inputs, reply) -> None:
    lm = lm_for(fake_lm)
    sig = dspex.signature(spec)

    def call(impl: str) -> object:
        fake_lm.script([reply])
        return dspex.predict(sig, inputs, impl=impl, lm=lm, pool=dspy_pool)

    native, dspy, m_native, m_dspy = _both(fake_lm, dspy_pool, call)
    assert m_native == m_dspy and len(m_native) == 1
    assert dict(native.items()) == dict(dspy.items())
    for key, value in native.items():
        assert type(dspy[key]) is type(value), key


def test_chain_of_thought_same_requests_and_results(fake_lm: FakeLMServer, dspy_pool) -> None:
    lm = lm_for(fake_lm)
    reply = "[[ ## reasoning ## ]]\n6 times 7\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"

    def call(impl: str) -> object:
        fake_lm.script([reply])
        cot = dspex.chain_of_thought("question -> answer: int", impl=impl, lm=lm, pool=dspy_pool)
        try:
            return cot(question="What is 6*7?")
        finally:
            getattr(cot, "close", lambda: None)()

    native, dspy, m_native, m_dspy = _both(fake_lm, dspy_pool, call)
    assert m_native == m_dspy
    assert native.answer == dspy.answer == 42 and native.reasoning == dspy.reasoning == "6 times 7"


def test_demos_and_json_adapter_same_requests(fake_lm: FakeLMServer, dspy_pool) -> None:
    lm = lm_for(fake_lm)
    demos = [{"question": "1+1?", "answer": 2}, {"question": "2+2?", "answer": 4}]
    reply = '{"answer": 9}'

    def call(impl: str) -> object:
        fake_lm.script([reply])
        return dspex.predict("question -> answer: int", {"question": "4+5?"}, impl=impl, lm=lm, pool=dspy_pool,
                             demos=demos, adapter=dspex.JSONAdapter(), instructions="Add the numbers.")

    native, dspy, m_native, m_dspy = _both(fake_lm, dspy_pool, call)
    assert m_native == m_dspy
    assert "Add the numbers." in m_native[0][0]["content"]
    assert native.answer == dspy.answer == 9


def test_parse_failure_is_parse_error_both_ways(fake_lm: FakeLMServer, dspy_pool) -> None:
    """A reply neither adapter can parse: both sides make the JSON fallback call, then ParseError."""
    lm = lm_for(fake_lm)
    counts = {}
    for impl in ("native", "dspy"):
        fake_lm.clear_requests()
        fake_lm.script(["no fields here", "still nothing"])
        with pytest.raises(dspex.ParseError):
            dspex.predict("question -> answer: int", {"question": "?"}, impl=impl, lm=lm, pool=dspy_pool)
        counts[impl] = [r["json"]["messages"] for r in fake_lm.requests]
    assert counts["native"] == counts["dspy"] and len(counts["native"]) == 2


def test_worker_module_state_roundtrip_matches_native_prompts(fake_lm: FakeLMServer, dspy_pool, tmp_path) -> None:
    """A state set in a worker module, read back, loads natively and yields the same prompt."""
    lm = lm_for(fake_lm)
    mod = dspex.predictor("predict", "question -> answer", impl="dspy", lm=lm, pool=dspy_pool)
    try:
        native = dspex.Predict("question -> answer", demos=[{"question": "capital of France?", "answer": "Paris"}])
        native.instructions = "Answer in one word."
        mod.load_state(native.dump_state())
        state = mod.dump_state()
        mod.save(tmp_path / "p.json")
        loaded = dspex.Predict("question -> answer").load(tmp_path / "p.json")
        assert state["demos"] == native.dump_state()["demos"]
        fake_lm.script(["[[ ## answer ## ]]\nRome\n\n[[ ## completed ## ]]"] * 2)
        fake_lm.clear_requests()
        a = mod(question="capital of Italy?")
        b = loaded(question="capital of Italy?", lm=lm)
        m = [r["json"]["messages"] for r in fake_lm.requests]
        assert m[0] == m[1] and a.answer == b.answer == "Rome"
        assert "Answer in one word." in m[0][0]["content"]
    finally:
        mod.close()
