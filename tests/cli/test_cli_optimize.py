"""`dspex optimize`: bootstrap on a 3-line trainset against the fake server, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, closed_port, dspex

pytestmark = pytest.mark.timeout(240)

METRIC = """\
def exact(example, prediction, trace=None):
    return True

not_callable = 3
"""

TRAIN = [
    {"question": "What is 2+2?", "answer": "4"},
    {"question": "What is 3+3?", "answer": "6"},
    {"question": "What is 1+1?", "answer": "2"},
]


@pytest.fixture
def project(workdir: Path) -> Path:
    from dspex import Predict

    Predict("question -> answer").save(workdir / "program.json")
    (workdir / "cli_metrics.py").write_text(METRIC)
    (workdir / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in TRAIN))
    return workdir


def base_args(*extra: str) -> list[str]:
    return [
        "optimize", "program.json", "--signature", "question -> answer", "--trainset", "train.jsonl",
        "--optimizer", "bootstrap", "--metric", "cli_metrics:exact", "--out", "optimized.json", *extra,
    ]  # fmt: skip


def lm_flags(server) -> list[str]:
    return ["--lm", "openai/fake", "--api-base", server.base_url, "--retries", "0"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".optimized.json"))


def test_bootstrap_on_three_examples(project: Path, fake_lm) -> None:
    proc = dspex(*base_args("--json"), *lm_flags(fake_lm), cwd=project, timeout=200)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    out = project / "optimized.json"
    assert doc["out"] == "optimized.json" and out.is_file()
    state = json.loads(out.read_text())
    assert state == doc["program"]
    demos = state["demos"]
    assert 1 <= len(demos) <= 3 and doc["demos"] == len(demos)
    assert {d["question"] for d in demos} <= {row["question"] for row in TRAIN}
    assert doc["trainset_size"] == 3
    assert fake_lm.requests, "the optimizer ran the program against the fake server"
    kinds = [e.get("kind") for e in doc["events"]]
    assert "done" in kinds  # the optimizer's progress stream reached the CLI
    assert leftovers(project) == []
    # The result loads back as a program.
    from dspex import Predict

    loaded = Predict("question -> answer").load(out)
    assert len(loaded.demos) == len(demos)


def test_human_output_and_plain_progress(project: Path, fake_lm) -> None:
    proc = dspex(*base_args(), *lm_flags(fake_lm), cwd=project, timeout=200)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("optimized program written to optimized.json")
    assert "[done" in proc.stderr  # plain progress lines on stderr (not a terminal here)


def test_bad_trainset_line_names_the_line_and_writes_nothing(project: Path, fake_lm) -> None:
    (project / "train.jsonl").write_text(
        json.dumps(TRAIN[0]) + "\n" + '{"question": "oops",\n' + json.dumps(TRAIN[2]) + "\n"
    )
    proc = dspex(*base_args(), *lm_flags(fake_lm), cwd=project)
    assert_one_line_error(proc, 2, "train.jsonl line 2", "not valid JSON")
    assert not (project / "optimized.json").exists()
    assert leftovers(project) == []
    assert fake_lm.requests == []


def test_trainset_line_without_an_input_field(project: Path, fake_lm) -> None:
    (project / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*TRAIN[:2], {"answer": "5"}]))
    proc = dspex(*base_args(), *lm_flags(fake_lm), cwd=project)
    assert_one_line_error(proc, 2, "line 3", "missing input field 'question'")
    assert not (project / "optimized.json").exists()


def test_trainset_line_that_is_not_an_object(project: Path, fake_lm) -> None:
    (project / "train.jsonl").write_text(json.dumps(TRAIN[0]) + "\n\n[1, 2]\n")
    proc = dspex(*base_args(), *lm_flags(fake_lm), cwd=project)
    assert_one_line_error(proc, 2, "line 3", "JSON object")


def test_bad_metric_and_program_arguments(project: Path, fake_lm) -> None:
    args = base_args()
    i = args.index("cli_metrics:exact")
    for metric, needle in [("nosuchmodule:f", "nosuchmodule"), ("cli_metrics:missing", "missing"),
                           ("cli_metrics:not_callable", "not_callable"), ("no_colon", "module:function")]:  # fmt: skip
        args[i] = metric
        assert_one_line_error(dspex(*args, *lm_flags(fake_lm), cwd=project), 2, needle)
    wrong_sig = base_args()
    wrong_sig[wrong_sig.index("question -> answer")] = "context, question -> answer"
    assert_one_line_error(dspex(*wrong_sig, *lm_flags(fake_lm), cwd=project), 2, "fields")
    (project / "program.json").write_text("{not json")
    assert_one_line_error(dspex(*base_args(), *lm_flags(fake_lm), cwd=project), 2, "program.json")
    assert not (project / "optimized.json").exists()
    assert fake_lm.requests == []


def test_unreachable_lm_fails_fast_and_writes_nothing(project: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1"
    proc = dspex(*base_args(), "--lm", "openai/x", "--api-base", base, "--retries", "0", cwd=project)
    assert_one_line_error(proc, 3, "unreachable", base)
    assert not (project / "optimized.json").exists()
    assert leftovers(project) == []


def test_failure_inside_the_optimizer_keeps_the_previous_output(project: Path, fake_lm) -> None:
    (project / "optimized.json").write_text('{"previous": true}')  # an older result survives a failed run
    proc = dspex(
        *base_args("--option", "no_such_option=1", "--no-progress"),
        *lm_flags(fake_lm),
        cwd=project,
        timeout=200,
    )
    assert_one_line_error(proc, 2, "no_such_option")
    assert json.loads((project / "optimized.json").read_text()) == {"previous": True}
    assert leftovers(project) == []


def test_reserved_option_names(project: Path, fake_lm) -> None:
    proc = dspex(*base_args("--option", "metric=x:y"), *lm_flags(fake_lm), cwd=project)
    assert_one_line_error(proc, 2, "--metric")
