"""dspex vs DSPy 3.4.1 against the same FakeLMServer: same requests, same outputs, same state files."""

from __future__ import annotations

import json
import os

import pytest

import dspex
from dspex.testing import FakeLMServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
dspy = pytest.importorskip("dspy")
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

pytestmark = pytest.mark.timeout(60)

SIGS = ["question -> answer", "context: list[str], question -> answer: int", "text -> label: bool, score: float"]


def _dspy_lm(server: FakeLMServer):
    return dspy.LM("openai/fake", api_base=server.base_url, api_key="x", cache=False)


def _dspex_lm(server: FakeLMServer) -> dspex.LM:
    return dspex.LM("openai/fake", api_base=server.base_url, cache=False)


def _inputs(sig: str) -> dict:
    return {"question": "What is 6*7?", "context": ["six", "seven"], "text": "great movie"} | {}


def _call_inputs(module_sig: str) -> dict:
    names = [n.split(":")[0].strip() for n in module_sig.split("->")[0].split(",")]
    return {n: _inputs(module_sig)[n] for n in names}


def _messages(server: FakeLMServer) -> list:
    return [r["json"]["messages"] for r in server.requests]


@pytest.mark.parametrize("sig", SIGS)
@pytest.mark.parametrize("module", ["Predict", "ChainOfThought"])
def test_same_messages_and_outputs(fake_lm: FakeLMServer, sig: str, module: str) -> None:
    inputs = _call_inputs(sig)
    theirs = getattr(dspy, module)(sig)(**inputs, lm=_dspy_lm(fake_lm))
    their_msgs = _messages(fake_lm)
    fake_lm.clear_requests()
    ours = getattr(dspex, module)(sig)(**inputs, lm=_dspex_lm(fake_lm))
    our_msgs = _messages(fake_lm)
    assert len(their_msgs) == len(our_msgs) == 1
    assert our_msgs == their_msgs
    assert dict(ours.items()) == dict(theirs.items())
    for k, v in ours.items():
        assert type(v) is type(theirs[k])


@pytest.mark.parametrize("module", ["Predict", "ChainOfThought"])
def test_json_fallback_same_two_requests(fake_lm: FakeLMServer, module: str) -> None:
    sig = "question -> answer: int"
    broken = "I think the answer is 42 but I forgot the format."
    fields = {"answer": 42} if module == "Predict" else {"reasoning": "6 times 7", "answer": 42}
    fake_lm.script([broken, json.dumps(fields)])
    theirs = getattr(dspy, module)(sig)(question="6*7?", lm=_dspy_lm(fake_lm))
    their_reqs = fake_lm.requests
    fake_lm.reset()
    fake_lm.script([broken, json.dumps(fields)])
    ours = getattr(dspex, module)(sig)(question="6*7?", lm=_dspex_lm(fake_lm))
    our_reqs = fake_lm.requests
    assert len(their_reqs) == len(our_reqs) == 2
    assert [r["json"]["messages"] for r in our_reqs] == [r["json"]["messages"] for r in their_reqs]
    # neither sends a response_format for an unknown local model name
    assert ("response_format" in our_reqs[1]["json"]) == ("response_format" in their_reqs[1]["json"])
    assert dict(ours.items()) == dict(theirs.items()) == fields


def test_fallback_failure_raises_parse_error_with_raw(fake_lm: FakeLMServer) -> None:
    fake_lm.script(["no fields here", "still no json"])
    with pytest.raises(dspex.ParseError) as info:
        dspex.Predict("question -> answer")(question="q", lm=_dspex_lm(fake_lm))
    assert info.value.raw == "still no json"
    assert len(fake_lm.requests) == 2  # exactly one JSONAdapter call, as DSPy


def test_json_adapter_failure_is_not_retried(fake_lm: FakeLMServer) -> None:
    fake_lm.script(["not json"])
    with pytest.raises(dspex.ParseError):
        dspex.Predict("question -> answer")(question="q", lm=_dspex_lm(fake_lm), adapter=dspex.JSONAdapter())
    assert len(fake_lm.requests) == 1


def _demo_program(kind: str, lib):
    sig = "question -> answer"
    mod = getattr(lib, kind)(sig)
    pred = mod.predict if kind == "ChainOfThought" else mod
    ex = lib.Example(question="What is 1+1?", answer="2", **({"reasoning": "one plus one"} if kind == "ChainOfThought" else {}))
    pred.demos = [ex.with_inputs("question"), {"question": "2+2?", "answer": "4", "augmented": True, **({"reasoning": "r"} if kind == "ChainOfThought" else {})}]
    if kind == "Predict":
        pred.signature = pred.signature.with_instructions("Answer tersely.")
    return mod


@pytest.mark.parametrize("kind", ["Predict", "ChainOfThought"])
def test_state_round_trips_both_ways(fake_lm: FakeLMServer, tmp_path, kind: str) -> None:
    # DSPy saves -> dspex loads
    theirs = _demo_program(kind, dspy)
    theirs.save(str(tmp_path / "dspy.json"))
    ours_loaded = getattr(dspex, kind)("question -> answer").load(tmp_path / "dspy.json")
    # dspex saves -> DSPy loads
    ours = _demo_program(kind, dspex)
    ours.save(tmp_path / "dspex.json")
    theirs_loaded = getattr(dspy, kind)("question -> answer")
    theirs_loaded.load(str(tmp_path / "dspex.json"))

    saved_by_dspy = json.loads((tmp_path / "dspy.json").read_text())
    saved_by_dspex = json.loads((tmp_path / "dspex.json").read_text())
    assert saved_by_dspex == saved_by_dspy  # same file content, metadata included

    prompts = []
    for mod, lm in ((theirs, _dspy_lm(fake_lm)), (ours_loaded, _dspex_lm(fake_lm)), (ours, _dspex_lm(fake_lm)), (theirs_loaded, _dspy_lm(fake_lm))):
        fake_lm.clear_requests()
        mod(question="3+3?", lm=lm)
        prompts.append(fake_lm.requests[0]["json"]["messages"])
    assert prompts[0] == prompts[1] == prompts[2] == prompts[3]
    assert len(prompts[0]) == 6  # system, 2 demo turns x 2, user
    assert "Answer tersely." in prompts[0][0]["content"] or kind == "ChainOfThought"


def test_class_form_load_needs_signature(tmp_path) -> None:
    dspex.Predict("question -> answer", demos=[{"question": "a", "answer": "b"}]).save(tmp_path / "p.json")
    loaded = dspex.Predict.load(tmp_path / "p.json", "question -> answer")
    assert loaded.demos == [{"question": "a", "answer": "b"}]
    with pytest.raises(TypeError, match="signature"):
        dspex.Predict.load(tmp_path / "p.json")
