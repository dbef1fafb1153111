"""Optimizing a composite program (dspex.Module, 2 stages) with MIPROv2, BootstrapFewShot and
GEPA in the optimizer pool against the fake LM server: the program's own forward() runs in
DSPy, host metrics are called back, and the optimized state loads natively into the same
class, giving the same prompts as DSPy's program with that state (DSPy 3.4.1, same run)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

import dspex
from dspex.testing import FakeLMServer

from .conftest import lm_for

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
dspy = pytest.importorskip("dspy")
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

pytestmark = pytest.mark.timeout(240)

TRAIN = [dspex.Example(question=f"What is {i}+{i}?", answer=str(2 * i)).with_inputs("question") for i in range(1, 5)]
CONFIGS: dict[str, dict[str, Any]] = {
    "bootstrap": {"max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "miprov2": {"auto": None, "num_candidates": 2, "num_trials": 2, "minibatch": False,
                "max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    "gepa": {"max_metric_calls": 16},
    # the other optimizers take the same path: small runs to show they accept a composite program
    "bootstrap_rs": {"max_bootstrapped_demos": 1, "max_labeled_demos": 1, "num_candidate_programs": 1},
    "copro": {"breadth": 2, "depth": 1},
    "simba": {"bsize": 2, "num_candidates": 2, "max_steps": 1, "max_demos": 1},
}


def rewrite(q: str) -> str:  # plain host code inside forward(): travels with the class
    return q.strip().rstrip("?")


class TwoStage(dspex.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plan = dspex.Predict("question -> plan")
        self.solve = dspex.ChainOfThought("question, plan -> answer")

    def forward(self, question: str) -> Any:
        plan = self.plan(question=rewrite(question)).plan
        return self.solve(question=question, plan=plan)


class DspyTwoStage(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plan = dspy.Predict("question -> plan")
        self.solve = dspy.ChainOfThought("question, plan -> answer")

    def forward(self, question: str) -> Any:
        plan = self.plan(question=rewrite(question)).plan
        return self.solve(question=question, plan=plan)


def lenient(example: dspex.Example, prediction: dspex.Prediction) -> float:
    return 1.0 if prediction.answer else 0.0


def gepa_metric(example: dspex.Example, prediction: dspex.Prediction) -> dict:
    return {"score": 0.5, "feedback": "Answer with the number only."}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_optimize_two_stage_program(name: str, fake_lm: FakeLMServer, opt_pool: Any, tmp_path: Any) -> None:
    events: list[dict] = []
    metric = gepa_metric if name == "gepa" else lenient
    start = TwoStage()
    result = dspex.optimize(start, TRAIN, optimizer=name, metric=metric, lm=lm_for(fake_lm), pool=opt_pool,
                            progress=events.append, **CONFIGS[name])
    assert result.module == "Program" and set(result.state) == {"plan", "solve.predict"}
    assert events[0]["kind"] == "start" and events[-1]["kind"] == "done"
    assert result.metric_calls > 0 and result.lm_calls > 0
    if name == "bootstrap":
        assert any(result.state[p]["demos"] for p in result.state), "bootstrapping leaves demos"
    assert start.plan.demos == []  # the caller's program is untouched

    # the result loads natively into the same class ...
    native = result.program
    assert type(native) is TwoStage and native is not start
    path = tmp_path / f"{name}.json"
    result.save(path)
    loaded = TwoStage().load(path)
    theirs = DspyTwoStage()
    theirs.load(str(path))
    # ... and gives the same prompts as DSPy's program with that state, run end to end
    fake_lm.reset()
    with dspy.context(lm=dspy.LM("openai/fake", api_base=fake_lm.base_url, api_key="x", cache=False)):
        their_pred = theirs(question="What is 9+9?")
    their_msgs = [r["json"]["messages"] for r in fake_lm.requests]
    fake_lm.reset()
    with dspex.context(lm=lm_for(fake_lm)):
        our_pred = loaded(question="What is 9+9?")
    our_msgs = [r["json"]["messages"] for r in fake_lm.requests]
    assert our_msgs == their_msgs and len(our_msgs) == 2
    assert dict(our_pred.items()) == dict(their_pred.items())
    for (_, a), (_, b) in zip(native.named_predictors(), loaded.named_predictors(), strict=True):
        assert a.dump_state() == b.dump_state()


def test_composite_needs_input_keys_from_forward(fake_lm: FakeLMServer, opt_pool: Any) -> None:
    plain = [{"question": "What is 1+1?", "answer": "2"}, {"question": "What is 2+2?", "answer": "4"}]
    # dicts carry no input keys: forward()'s parameters name them
    result = dspex.optimize(TwoStage(), plain, optimizer="labeled", lm=lm_for(fake_lm), pool=opt_pool, k=1)
    assert result.state["plan"]["demos"] and result.module == "Program"


def test_composite_checkpoint_resume(fake_lm: FakeLMServer, opt_pool: Any, tmp_path: Any) -> None:
    ckpt = tmp_path / "run.json"
    kw = {"optimizer": "bootstrap", "metric": lenient, "lm": lm_for(fake_lm), "pool": opt_pool,
          "checkpoint": ckpt, "max_bootstrapped_demos": 1, "max_labeled_demos": 0}
    first = dspex.optimize(TwoStage(), TRAIN, **kw)
    assert json.loads(ckpt.read_text())["completed"]
    fake_lm.clear_requests()
    again = dspex.optimize(TwoStage(), TRAIN, **kw)
    assert again.resumed and again.state == first.state and fake_lm.requests == []
    assert type(again.program) is TwoStage


async def test_cancelling_a_composite_optimization_frees_the_worker(fake_lm: FakeLMServer, opt_pool: Any) -> None:
    fake_lm.latency = 0.05
    pid_before = opt_pool.workers()[0]
    first_lm = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_event(e: dict) -> None:
        if e["kind"] == "lm":
            loop.call_soon_threadsafe(first_lm.set)

    long = {"auto": None, "num_candidates": 4, "num_trials": 30, "minibatch": False,
            "max_bootstrapped_demos": 2, "max_labeled_demos": 2}
    task = asyncio.ensure_future(dspex.aoptimize(TwoStage(), TRAIN * 3, optimizer="miprov2", metric=lenient,
                                                 lm=lm_for(fake_lm), pool=opt_pool, progress=on_event, **long))
    await asyncio.wait_for(first_lm.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(160):  # the worker stops the run itself (well within the pool's cancel grace)
        if not opt_pool.stats()["in_flight"]:
            break
        await asyncio.sleep(0.05)
    assert opt_pool.stats()["in_flight"] == 0 and opt_pool.workers() == [pid_before]
    fake_lm.latency = 0.0


HINT = "Add the two numbers and reply with the sum only."


def _teacher(body: dict) -> str:
    """A fake LM that answers right only when the instructions carry HINT, and whose
    reflection proposes HINT: GEPA must find it and the state must carry it."""
    import re

    from dspex.testing._autofill import autofill

    messages = body.get("messages") or []
    text = "\n".join(str(m.get("content", "")) for m in messages)
    if "new_instruction" in str(messages[0].get("content", "")):  # DSPy GEPA's ProposeInstruction (JSONAdapter)
        return json.dumps({"new_instruction": HINT})
    if "`answer`" in str(messages[0].get("content", "")) and (m := re.findall(r"What is (\d+)\+(\d+)\?", text)):
        a, b = m[-1]
        answer = str(int(a) + int(b)) if HINT in text else "I am not sure"
        return f"[[ ## reasoning ## ]]\nadding\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"
    return autofill(messages)


def exact(example: dspex.Example, prediction: dspex.Prediction) -> dict:
    right = prediction.answer == example.answer
    return {"score": 1.0 if right else 0.0, "feedback": "correct" if right else f"the answer is {example.answer}"}


def test_gepa_finds_a_better_instruction_and_it_serves_natively(fake_lm: FakeLMServer, opt_pool: Any,
                                                                 tmp_path: Any) -> None:
    fake_lm.responder = _teacher
    fake_lm.autofill = False
    result = dspex.optimize(TwoStage(), TRAIN, optimizer="gepa", metric=exact, lm=lm_for(fake_lm), pool=opt_pool,
                            max_metric_calls=40, reflection_minibatch_size=2, seed=0)
    changed = [name for name, st in result.state.items() if st["signature"]["instructions"] == HINT]
    assert changed, {k: v["signature"]["instructions"] for k, v in result.state.items()}
    served = result.program  # natively, with GEPA's instruction
    fake_lm.clear_requests()
    with dspex.context(lm=lm_for(fake_lm)):
        assert served(question="What is 20+22?").answer == "42"
    ours = [r["json"]["messages"] for r in fake_lm.requests]
    result.save(tmp_path / "gepa.json")
    theirs = DspyTwoStage()
    theirs.load(str(tmp_path / "gepa.json"))
    fake_lm.clear_requests()
    with dspy.context(lm=dspy.LM("openai/fake", api_base=fake_lm.base_url, api_key="x", cache=False)):
        assert theirs(question="What is 20+22?").answer == "42"
    assert [r["json"]["messages"] for r in fake_lm.requests] == ours
    with dspex.context(lm=lm_for(fake_lm)):
        assert TwoStage()(question="What is 20+22?").answer == "I am not sure"  # the unoptimized program


class Shapes(dspex.Module):
    """Predictors in a list, a dict, an alias and a frozen sub-module: the same names both sides."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = [dspex.Predict("question -> plan"), dspex.ChainOfThought("question, plan -> answer")]
        self.extra = {"polish": dspex.Predict("answer -> final")}
        self.first = self.steps[0]
        self.frozen = TwoStage()
        self.frozen._compiled = True

    def forward(self, question: str) -> Any:
        plan = self.first(question=question).plan
        answer = self.steps[1](question=question, plan=plan).answer
        return dspex.Prediction(answer=answer, final=self.extra["polish"](answer=answer).final)


def test_composite_shapes_keep_their_names(fake_lm: FakeLMServer, opt_pool: Any) -> None:
    prog = Shapes()
    result = dspex.optimize(prog, TRAIN, optimizer="labeled", lm=lm_for(fake_lm), pool=opt_pool, k=1)
    names = [n for n, _ in prog.named_predictors()]
    assert names == ["steps[0]", "steps[1].predict", "extra['polish']"]
    assert list(result.state) == names
    assert [n for n, _ in result.program.named_predictors()] == names
    # forward() builds a dspex.Prediction: in the worker it reaches DSPy's optimizer as a dspy.Prediction
    boot = dspex.optimize(prog, TRAIN, optimizer="bootstrap", metric=lambda e, p: bool(p.final), lm=lm_for(fake_lm),
                          pool=opt_pool, max_bootstrapped_demos=1, max_labeled_demos=0)
    assert boot.metric_calls > 0 and any(boot.state[n]["demos"] for n in names)
