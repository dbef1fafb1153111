"""Every example runs against the fake LM server: ``main(lm=...)`` in process, and the
main job (the research assistant) also as the README runs it, a subprocess with
``--api-base``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["DSPEX_DSPY_CACHE"] = "off"  # worker pools started here: DSPy's cache off

import dspex
from dspex.testing import FakeLMServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))
WORKER_EXAMPLES = {"research_assistant", "bootstrap_fewshot", "multi_pool_flagship"}


def _load(name: str) -> ModuleType:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def _close_pools() -> Iterator[None]:
    yield
    dspex.pool.manager().close_all()  # the dspy / optimizer pools the examples started


def test_every_example_is_listed() -> None:
    expected = {
        "research_assistant", "basic_qa", "chain_of_thought", "qa_with_context", "multi_hop", "rag",
        "custom_instructions", "multi_field_outputs", "classification", "entity_extraction", "summarization",
        "translation", "code_generation", "math_reasoning", "custom_module", "bootstrap_fewshot",
        "direct_lm_call", "timeouts", "multi_pool_flagship",
    }
    assert expected <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.timeout(180)
def test_example_runs(name: str, fake_lm: FakeLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = _load(name)
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False, num_retries=0)
    kwargs: dict[str, object] = {}
    if name == "research_assistant":
        kwargs["program"] = tmp_path / "program.json"
    if name == "multi_pool_flagship":
        kwargs["optimize_timeout"] = 120.0  # a bound, not an expectation: GEPA must finish
    result = module.main([], lm=lm, **kwargs)
    assert result
    out = capsys.readouterr().out
    assert out.strip()
    assert len(fake_lm.requests) >= 1  # it really called the LM
    if name == "multi_pool_flagship":
        assert "GEPA score" in out and "GEPA did not finish" not in out
    if name == "research_assistant":
        assert (tmp_path / "program.json").exists()  # optimized once, saved
        where = {s.name: (s.where, s.pid) for s in result.trace.steps}
        assert where["plan"] == ("native", None)
        assert where["refine"][0] == "dspy" and where["refine"][1]
        assert where["bm25"][0] == "native" and where["dense"][0] == "dspy" and where["colbertv2"][0] == "dspy"
        assert "## " in result["markdown"]
        for column in ("step", "where", "pid", "ms"):
            assert column in out


@pytest.mark.timeout(240)
def test_main_job_as_a_subprocess(fake_lm: FakeLMServer, tmp_path: Path) -> None:
    env = {**os.environ, "DSPEX_NO_LOCAL_MODEL": "1"}
    cmd = [sys.executable, str(EXAMPLES / "research_assistant.py"), "--api-base", fake_lm.base_url,
           "--model", "fake", "--program", str(tmp_path / "program.json"), "--question", "Which planet is red?"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Which planet is red?" in proc.stdout
    assert "refine" in proc.stdout and "dspy" in proc.stdout and "native" in proc.stdout
    assert (tmp_path / "program.json").exists()


def test_main_job_reuses_the_shipped_program_and_reoptimizes_atomically(
        fake_lm: FakeLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped = EXAMPLES / "research_program.json"
    assert set(json.loads(shipped.read_text())) == {"predict"}  # a DSPy ChainOfThought state
    program = tmp_path / "program.json"
    shutil.copy(shipped, program)
    module = _load("research_assistant")
    lm = dspex.LM("openai/fake", api_base=fake_lm.base_url, cache=False, num_retries=0)
    result = module.main([], lm=lm, program=program)
    out = capsys.readouterr().out
    assert "optimizing" not in out and "using the optimized synthesis program" in out
    assert program.read_text() == shipped.read_text()
    assert result.trace.status == "ok" and "## " in result["markdown"]
    module.main(["--reoptimize"], lm=lm, program=program)
    assert "MIPROv2 done" in capsys.readouterr().out
    assert set(json.loads(program.read_text())) == {"predict"}
    assert [p.name for p in tmp_path.iterdir()] == ["program.json"]  # no temp file left behind


def test_training_examples_quote_the_passage_with_the_fact_and_stay_off_the_benchmark() -> None:
    module = _load("research_assistant")
    sys.path.insert(0, str(EXAMPLES.parent / "bench"))
    from quality_questions import QUESTIONS

    corpus = Path(dspex.__file__).parent / "data" / "corpus" / "solar_system.jsonl"
    by_text = {row["text"]: row["pid"] for row in map(json.loads, corpus.read_text().splitlines())}
    bench_pids = {pid for q in QUESTIONS for pid in q["pids"]}  # type: ignore[attr-defined]
    bench_questions = {str(q["question"]).lower() for q in QUESTIONS}
    assert len(module.TRAIN) >= 40
    for example in module.TRAIN:
        row = module.training_example(example)
        assert len(row["context"]) == 3 and example["question"].lower() not in bench_questions
        assert example["fact"].lower() in example["answer"].lower()
        source = [t for t in row["context"] if example["fact"].lower() in t.lower()]
        assert source, f"no passage holds the fact of {example['question']!r}"
        assert source[0].split(" | ", 1)[1] in row["reasoning"]
        assert by_text.get(source[0]) not in bench_pids, example["question"]  # the bench's passages stay unseen


def test_the_shipped_program_is_an_optimized_one() -> None:
    """The shipped state is MIPROv2's pick, not DSPy's blank program (bench: main vs main-unoptimized)."""
    predict = json.loads((EXAMPLES / "research_program.json").read_text())["predict"]
    default = "Given the fields `question`, `context`, produce the fields `answer`."
    assert predict["demos"] or predict["signature"]["instructions"] != default
    for demo in predict["demos"]:
        assert {"question", "context", "answer"} <= set(demo)


@pytest.mark.timeout(120)
def test_main_job_failure_is_one_line_with_the_fix(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    program = tmp_path / "program.json"
    shutil.copy(EXAMPLES / "research_program.json", program)
    env = {**os.environ, "DSPEX_NO_LOCAL_MODEL": "1"}
    cmd = [sys.executable, str(EXAMPLES / "research_assistant.py"), "--api-base", dead, "--model", "fake",
           "--program", str(program)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("research_assistant: error: "), proc.stderr[-2000:]
    assert "plan" in lines[-1] and " — " in lines[-1]  # which step, and what to do
    assert "Traceback" not in proc.stderr
