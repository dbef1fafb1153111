"""`dspex predict` against the fake LM server, run as a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, clean_env, closed_port, dspex

from dspex.testing import Fault

pytestmark = pytest.mark.timeout(120)


def lm_flags(server) -> list[str]:
    return ["--lm", "openai/fake", "--api-base", server.base_url, "--retries", "0"]


def user_text(request: dict) -> str:
    return "\n".join(m["content"] for m in request["json"]["messages"] if m["role"] == "user")


def test_predict_human_output(workdir: Path, fake_lm) -> None:
    fake_lm.script(["[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])
    proc = dspex("predict", "question -> answer", "question=What is 2+2?", *lm_flags(fake_lm), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "answer: 4\n"
    assert proc.stderr == ""
    (request,) = fake_lm.requests
    assert request["json"]["model"] == "fake"
    assert "What is 2+2?" in user_text(request)


def test_predict_json_output_keeps_types(workdir: Path, fake_lm) -> None:
    fake_lm.script(["[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])
    proc = dspex(
        "predict", "question -> answer: int", "question=2+2?", "--json", *lm_flags(fake_lm), cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON document
    assert doc["outputs"] == {"answer": 4}
    assert doc["inputs"] == {"question": "2+2?"}
    assert doc["usage"]["calls"] == 1
    assert "openai/fake" in doc["lm"]


def test_predict_cot_shows_reasoning_then_answer(workdir: Path, fake_lm) -> None:
    fake_lm.script(["[[ ## reasoning ## ]]\nTwo and two.\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])
    proc = dspex("predict", "question -> answer", "question=2+2?", "--cot", *lm_flags(fake_lm), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "reasoning: Two and two.\nanswer: 4\n"
    system = fake_lm.requests[0]["json"]["messages"][0]["content"]
    assert "`reasoning`" in system  # the prompt asked for the reasoning field


def test_predict_cot_json(workdir: Path, fake_lm) -> None:
    proc = dspex(
        "predict", "question -> answer", "question=2+2?", "--cot", "--json", *lm_flags(fake_lm), cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr
    outputs = json.loads(proc.stdout)["outputs"]
    assert list(outputs) == ["reasoning", "answer"]  # autofilled by the fake server


def test_predict_typed_inputs_and_input_json(workdir: Path, fake_lm) -> None:
    proc = dspex(
        "predict",
        "numbers: list[int], note -> total: int",
        "numbers=[1, 2, 3]",
        "--input-json",
        '{"note": "42"}',
        "--json",
        *lm_flags(fake_lm),
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"] == {"numbers": [1, 2, 3], "note": "42"}  # str field stays a str
    assert "[1, 2, 3]" in user_text(fake_lm.requests[0])


def test_predict_lm_from_environment(workdir: Path, fake_lm) -> None:
    env = clean_env(workdir, DSPEX_LM="openai/from-env", DSPEX_API_BASE=fake_lm.base_url)
    proc = dspex("predict", "question -> answer", "question=hi", cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("answer: ")
    assert fake_lm.requests[0]["json"]["model"] == "from-env"


def test_predict_lm_from_config_file(workdir: Path, fake_lm) -> None:
    (workdir / "dspex.toml").write_text(
        f'[lm]\nmodel = "openai/from-config"\napi_base = "{fake_lm.base_url}"\n'
    )
    proc = dspex("predict", "question -> answer", "question=hi", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert fake_lm.requests[0]["json"]["model"] == "from-config"


def test_malformed_signature(workdir: Path, fake_lm) -> None:
    proc = dspex("predict", "question answer", "question=hi", *lm_flags(fake_lm), cwd=workdir)
    assert_one_line_error(proc, 2, "malformed signature", "->")
    assert fake_lm.requests == []


def test_missing_input_field(workdir: Path, fake_lm) -> None:
    proc = dspex("predict", "context, question -> answer", "question=hi", *lm_flags(fake_lm), cwd=workdir)
    assert_one_line_error(proc, 2, "missing input field 'context'", 'context="..."')
    assert fake_lm.requests == []


def test_unknown_input_field_and_bad_pair(workdir: Path, fake_lm) -> None:
    proc = dspex("predict", "question -> answer", "question=hi", "extra=1", *lm_flags(fake_lm), cwd=workdir)
    assert_one_line_error(proc, 2, "unknown input field 'extra'")
    proc = dspex("predict", "question -> answer", "question", *lm_flags(fake_lm), cwd=workdir)
    assert_one_line_error(proc, 2, "not key=value")
    proc = dspex("predict", "question -> answer", "--input-json", "[1]", *lm_flags(fake_lm), cwd=workdir)
    assert_one_line_error(proc, 2, "JSON object")


def test_unreachable_endpoint_fails_fast_with_exit_3(workdir: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1"
    proc = dspex(
        "predict",
        "question -> answer",
        "question=hi",
        "--lm",
        "openai/x",
        "--api-base",
        base,
        "--retries",
        "0",
        cwd=workdir,
    )
    assert_one_line_error(proc, 3, "unreachable", base, "--api-base")
    assert proc.stdout == ""


def test_server_error_is_a_runtime_failure(workdir: Path, fake_lm) -> None:
    fake_lm.script([Fault.server_error(500)])
    proc = dspex("predict", "question -> answer", "question=hi", *lm_flags(fake_lm), cwd=workdir)
    assert_one_line_error(proc, 1, "500")


def test_auth_error_is_an_environment_problem(workdir: Path, fake_lm) -> None:
    fake_lm.script([Fault.auth()])
    proc = dspex("predict", "question -> answer", "question=hi", *lm_flags(fake_lm), cwd=workdir)
    assert_one_line_error(proc, 3, "API key")


def test_unparseable_reply_is_a_runtime_failure_and_debug_shows_the_traceback(workdir: Path, fake_lm) -> None:
    fake_lm.script(["no fields here", "still nothing", "nothing", "nothing"])
    args = ["predict", "question -> answer: int", "question=hi", *lm_flags(fake_lm)]
    proc = dspex(*args, cwd=workdir)
    assert_one_line_error(proc, 1, "parse")
    fake_lm.script(["no fields here", "still nothing", "nothing", "nothing"])
    proc = dspex(*args, "--debug", cwd=workdir)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("dspex: error: ")


def test_lm_model_without_provider(workdir: Path, fake_lm) -> None:
    proc = dspex("predict", "q -> a", "q=1", "--lm", "gpt-4o", "--api-base", fake_lm.base_url, cwd=workdir)
    assert_one_line_error(proc, 2, "openai/gpt-4o")


def test_predict_impl_native_and_dspy_agree(workdir: Path, fake_lm) -> None:
    """--impl dspy runs DSPy 3.4.1 in a worker of the `dspy` pool; --impl native in-process."""
    reply = "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
    docs = {}
    for impl in ("native", "dspy"):
        fake_lm.script([reply])
        proc = dspex(
            "predict", "question -> answer: int", "question=2+2?", "--impl", impl, "--json", *lm_flags(fake_lm),
            cwd=workdir, timeout=200,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        docs[impl] = json.loads(proc.stdout)
        assert docs[impl]["impl"] == impl
    assert docs["native"]["outputs"] == docs["dspy"]["outputs"] == {"answer": 4}
    native_req, dspy_req = fake_lm.requests
    assert native_req["json"]["messages"] == dspy_req["json"]["messages"]  # same prompt, byte for byte


def test_ctrl_c_exits_130_with_one_line(workdir: Path, fake_lm) -> None:
    import signal
    import subprocess
    import sys
    import time

    from cli_helpers import clean_env

    fake_lm.script([Fault.hang(30)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "dspex.cli", "predict", "question -> answer", "question=hi", *lm_flags(fake_lm)],
        cwd=workdir, env=clean_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not fake_lm.requests and time.monotonic() < deadline:  # the call is in flight
            time.sleep(0.05)
        assert fake_lm.requests
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["dspex: error: interrupted — nothing was written"]
    assert out == ""
