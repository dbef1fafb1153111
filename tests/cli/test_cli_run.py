"""`dspex run pipeline.yaml` with a small saved pipeline against the fake LM server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, closed_port, dspex

pytestmark = pytest.mark.timeout(120)

PIPELINE = """\
dspex_pipeline: 1
name: qa
steps:
  - name: answer
    type: native
    signature: "question, n: int -> answer"
  - name: shout
    type: native
    call: "cli_steps:shout"
    reads: [answer, n]
    writes: [loud]
"""

STEPS = """\
def shout(answer, n):
    return {"loud": str(answer).upper() + "!" * n}
"""


@pytest.fixture
def pipeline_dir(workdir: Path) -> Path:
    (workdir / "qa.yaml").write_text(PIPELINE)
    (workdir / "cli_steps.py").write_text(STEPS)
    return workdir


def lm_flags(server) -> list[str]:
    return ["--lm", "openai/fake", "--api-base", server.base_url, "--retries", "0"]


def test_run_human_output_with_trace(pipeline_dir: Path, fake_lm) -> None:
    fake_lm.script(["[[ ## answer ## ]]\nfour\n\n[[ ## completed ## ]]"])
    proc = dspex(
        "run", "qa.yaml", "--input", "question=2+2?", "--input", "n=3", "--allow", "cli_steps:*", "--trace",
        *lm_flags(fake_lm), cwd=pipeline_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["answer: four", "loud: FOUR!!!"]  # n=3 arrived as an int
    table = "\n".join(lines[2:])
    assert "answer" in table and "shout" in table and "native" in table and "ok" in table
    assert len(fake_lm.requests) == 1


def test_run_json_with_input_json(pipeline_dir: Path, fake_lm) -> None:
    proc = dspex(
        "run", "qa.yaml", "--input-json", '{"question": "hi", "n": 1}', "--input", "n=2", "--allow", "cli_steps:shout",
        "--json", *lm_flags(fake_lm), cwd=pipeline_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["inputs"] == {"question": "hi", "n": 2}  # --input wins over --input-json
    assert set(doc["outputs"]) == {"answer", "loud"}
    assert doc["outputs"]["loud"].endswith("!!")
    assert doc["result"]["question"] == "hi"
    assert [s["name"] for s in doc["trace"]["steps"]] == ["answer", "shout"]
    assert doc["trace"]["status"] == "ok"
    assert doc["usage"]["calls"] == 1


def test_run_values_that_are_not_json_stay_strings(pipeline_dir: Path, fake_lm) -> None:
    proc = dspex(
        "run", "qa.yaml", "--input", "question=[not json", "--input", "n=0", "--allow", "cli_steps:*", "--json",
        *lm_flags(fake_lm), cwd=pipeline_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"] == {"question": "[not json", "n": 0}


def test_run_without_allow_names_the_flag(pipeline_dir: Path, fake_lm) -> None:
    proc = dspex(
        "run", "qa.yaml", "--input", "question=hi", "--input", "n=1", *lm_flags(fake_lm), cwd=pipeline_dir
    )
    assert_one_line_error(proc, 2, "cli_steps:shout", "--allow")
    assert fake_lm.requests == []


def test_run_missing_input(pipeline_dir: Path, fake_lm) -> None:
    proc = dspex(
        "run", "qa.yaml", "--input", "n=1", "--allow", "cli_steps:*", *lm_flags(fake_lm), cwd=pipeline_dir
    )
    assert_one_line_error(proc, 2, "question", "--input")
    assert fake_lm.requests == []


def test_run_bad_files(workdir: Path) -> None:
    assert_one_line_error(dspex("run", "nope.yaml", cwd=workdir), 2, "nope.yaml")
    (workdir / "broken.yaml").write_text("steps: [\n")
    assert_one_line_error(dspex("run", "broken.yaml", cwd=workdir), 2, "broken.yaml")
    (workdir / "list.yaml").write_text("[1, 2]\n")
    assert_one_line_error(dspex("run", "list.yaml", cwd=workdir), 2)


def test_run_step_failure_is_a_runtime_error(pipeline_dir: Path, fake_lm) -> None:
    from dspex.testing import Fault

    fake_lm.script([Fault.server_error(500)])
    proc = dspex(
        "run",
        "qa.yaml",
        "-i",
        "question=hi",
        "-i",
        "n=1",
        "--allow",
        "cli_steps:*",
        *lm_flags(fake_lm),
        cwd=pipeline_dir,
    )
    assert_one_line_error(proc, 1, "answer")


def test_run_unreachable_lm_is_an_environment_problem(pipeline_dir: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1"
    proc = dspex(
        "run", "qa.yaml", "-i", "question=hi", "-i", "n=1", "--allow", "cli_steps:*",
        "--lm", "openai/x", "--api-base", base, "--retries", "0", cwd=pipeline_dir,
    )  # fmt: skip
    assert_one_line_error(proc, 3, "unreachable", base)


def test_run_with_a_worker_step_from_the_config(pipeline_dir: Path, fake_lm) -> None:
    """A worker step on a pool defined in dspex.toml: the run starts the pool, calls it, and
    the trace records the worker's pid."""
    (pipeline_dir / "dspex.toml").write_text(
        '[pools.tiny]\nsize = 1\nhandlers = ["dspex.testing.handlers"]\npreload = []\nenv = {}\n'
    )
    (pipeline_dir / "mixed.yaml").write_text(
        PIPELINE + "  - name: echoed\n    type: worker\n    pool: tiny\n    handler: echo\n"
        "    reads: [loud]\n    writes: [echoed]\n"
    )
    proc = dspex(
        "run", "mixed.yaml", "-i", "question=hi", "-i", "n=1", "--allow", "cli_steps:*", "--json",
        *lm_flags(fake_lm), cwd=pipeline_dir, timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "echoed" in doc["outputs"]
    assert str(doc["outputs"]["loud"]) in json.dumps(doc["outputs"]["echoed"])
    worker = next(s for s in doc["trace"]["steps"] if s["name"] == "echoed")
    assert worker["kind"] == "worker" and worker["pid"]
