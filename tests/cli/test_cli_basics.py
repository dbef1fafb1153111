"""The dspex command's frame: version, help, usage errors, doctor, lm status, bench."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import REPO, assert_one_line_error, clean_env, closed_port, dspex

pytestmark = pytest.mark.timeout(120)


def test_version(workdir: Path) -> None:
    import dspex as pkg

    proc = dspex("--version", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"dspex {pkg.__version__}"


def test_help_documents_every_command_and_the_exit_codes(workdir: Path) -> None:
    proc = dspex("--help", cwd=workdir)
    assert proc.returncode == 0
    for command in ("predict", "run", "optimize", "pools", "lm", "doctor", "bench"):
        assert command in proc.stdout
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in proc.stdout, code


def test_the_installed_script_runs(workdir: Path) -> None:
    exe = shutil.which("dspex")
    if exe is None:
        pytest.skip("the dspex console script is not on PATH (pip install -e . not run)")
    import subprocess

    proc = subprocess.run(
        [exe, "--version"], cwd=workdir, env=clean_env(workdir), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("dspex ")


def test_unknown_subcommand_is_a_one_line_usage_error(workdir: Path) -> None:
    proc = dspex("frobnicate", cwd=workdir)
    assert_one_line_error(proc, 2, "frobnicate", "--help")
    assert proc.stdout == ""


def test_unknown_option_is_a_one_line_usage_error(workdir: Path) -> None:
    proc = dspex("doctor", "--bogus", cwd=workdir)
    assert_one_line_error(proc, 2, "--bogus")


def test_no_command_and_lm_without_action_are_usage_errors(workdir: Path) -> None:
    proc = dspex(cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("dspex: error: no command given")
    assert_one_line_error(dspex("lm", cwd=workdir), 2, "dspex lm status")


def test_bad_config_file_is_a_usage_error(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text("[lm\nmodel = 1\n")
    proc = dspex("pools", cwd=workdir)
    assert_one_line_error(proc, 2, "dspex.toml")


# ---------------------------------------------------------------- doctor


def _doctor_json(workdir: Path, **env: str) -> tuple[int, dict, str]:
    proc = dspex("doctor", "--json", cwd=workdir, env=clean_env(workdir, **env))
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def _check(doc: dict, name: str) -> dict:
    matches = [c for c in doc["checks"] if c["name"] == name]
    assert matches, (name, [c["name"] for c in doc["checks"]])
    return matches[0]


def test_doctor_json_shape_with_a_reachable_configured_lm(workdir: Path, fake_lm) -> None:
    (workdir / "dspex.toml").write_text(f'[lm]\nmodel = "openai/fake"\napi_base = "{fake_lm.base_url}"\n')
    code, doc, _ = _doctor_json(workdir)
    assert set(doc) == {"ok", "version", "checks", "problems"}
    for check in doc["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in ("ok", "info", "warn", "fail")
        if check["status"] in ("warn", "fail"):
            assert check["fix"], check  # every problem comes with its fix
    names = {c["name"] for c in doc["checks"]}
    assert {
        "dspex",
        "python",
        "msgpack",
        "httpx",
        "dspy",
        "llama-cpp-python",
        "model file",
        "rich",
        "ray",
    } <= names
    config = _check(doc, "config")
    assert config["status"] == "ok" and str(workdir / "dspex.toml") in config["detail"]
    lm = _check(doc, "LM")
    assert lm["status"] == "ok" and fake_lm.base_url in lm["detail"]
    assert doc["problems"] == [c for c in doc["checks"] if c["status"] in ("warn", "fail")]
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert doc["ok"] is (not failed)
    assert code == (0 if not failed else 3)


def test_doctor_reports_an_unreachable_lm_with_the_fix_and_exit_3(workdir: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1"
    code, doc, stderr = _doctor_json(workdir, DSPEX_LM="openai/x", DSPEX_API_BASE=base)
    lm = _check(doc, "LM")
    assert lm["status"] == "fail" and "unreachable" in lm["detail"] and base in lm["detail"]
    assert "DSPEX_API_BASE" in lm["fix"]
    assert doc["ok"] is False and code == 3
    assert lm in doc["problems"]
    assert stderr == ""  # --json: the document says it all

    # Human output: the fix lines, and one error line on stderr.
    proc = dspex("doctor", cwd=workdir, env=clean_env(workdir, DSPEX_LM="openai/x", DSPEX_API_BASE=base))
    assert proc.returncode == 3
    assert "fix: start that server" in proc.stdout
    assert_one_line_error(proc, 3, "doctor found problems")


def test_doctor_flags_a_missing_model_file_with_the_install_command(workdir: Path, tmp_path: Path) -> None:
    code, doc, _ = _doctor_json(workdir, DSPEX_LOCAL_MODEL=str(tmp_path / "nope.gguf"))
    model = _check(doc, "model file")
    assert model["status"] == "warn" and "DSPEX_LOCAL_MODEL" in model["fix"]
    # No LM configured and no embedded model: nothing can answer -> a failure, exit 3.
    lm = _check(doc, "LM")
    assert lm["status"] == "fail" and "DSPEX_LM" in lm["fix"]
    assert code == 3


# ---------------------------------------------------------------- lm


def test_lm_status_when_not_running(workdir: Path) -> None:
    proc = dspex("lm", "status", cwd=workdir)
    assert proc.returncode == 3, proc.stderr
    assert "not running" in proc.stdout and "dspex lm serve" in proc.stdout
    proc = dspex("lm", "status", "--json", cwd=workdir)
    assert proc.returncode == 3
    doc = json.loads(proc.stdout)
    assert doc["running"] is False and doc["ok"] is False


def test_lm_stop_when_not_running(workdir: Path) -> None:
    proc = dspex("lm", "stop", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "no local model server was running" in proc.stdout


def test_lm_status_with_a_missing_model_file_is_an_environment_error(workdir: Path, tmp_path: Path) -> None:
    env = clean_env(workdir, DSPEX_LOCAL_MODEL=str(tmp_path / "missing.gguf"))
    proc = dspex("lm", "status", cwd=workdir, env=env)
    assert_one_line_error(proc, 3, "missing.gguf")


# ---------------------------------------------------------------- bench


FAKE_BENCH = """
import os, sys
quick = "--quick" in sys.argv
print(f"fake bench quick={quick} env={os.environ.get('DSPEX_BENCH_QUICK')}")
sys.exit(int(os.environ.get("FAKE_BENCH_RC", "0")))
"""


def _fake_bench_dir(tmp_path: Path) -> Path:
    bench = tmp_path / "repo" / "bench"
    bench.mkdir(parents=True)
    shutil.copy(REPO / "bench" / "run_all.py", bench / "run_all.py")
    (bench / "bench_alpha.py").write_text(FAKE_BENCH)  # mentions --quick: has a quick mode
    (bench / "bench_slow.py").write_text("print('slow, no quick mode')\n")
    return bench


def test_bench_quick_runs_quick_benchmarks_and_skips_the_others(workdir: Path, tmp_path: Path) -> None:
    bench = _fake_bench_dir(tmp_path)
    env = clean_env(workdir, DSPEX_BENCH_DIR=str(bench))
    proc = dspex("bench", "--quick", cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "fake bench quick=True env=1" in proc.stdout
    assert "slow" in proc.stdout and "skipped" in proc.stdout
    assert "slow, no quick mode" not in proc.stdout

    proc = dspex("bench", "--quick", "--json", cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["quick"] is True
    assert [r["name"] for r in doc["results"]] == ["smoke", "alpha"]
    assert all(r["status"] == "ok" for r in doc["results"])
    assert [s["name"] for s in doc["skipped"]] == ["slow"]


def test_bench_failure_and_unknown_name(workdir: Path, tmp_path: Path) -> None:
    bench = _fake_bench_dir(tmp_path)
    env = clean_env(workdir, DSPEX_BENCH_DIR=str(bench), FAKE_BENCH_RC="3")
    proc = dspex("bench", "alpha", cwd=workdir, env=env)
    assert proc.returncode == 1
    assert "failed" in proc.stdout
    proc = dspex("bench", "nosuch", cwd=workdir, env=env)
    assert proc.returncode == 2
    assert "nosuch" in proc.stderr and "alpha" in proc.stderr


def test_bench_without_a_checkout_says_where_to_run_it(workdir: Path, tmp_path: Path) -> None:
    env = clean_env(workdir, DSPEX_BENCH_DIR=str(tmp_path / "empty"))
    assert_one_line_error(dspex("bench", cwd=workdir, env=env), 3, "DSPEX_BENCH_DIR")


def test_bench_list_finds_the_repo_benchmarks(tmp_path: Path) -> None:
    proc = dspex("bench", "--list", "--json", cwd=REPO, env=clean_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    names = [b["name"] for b in json.loads(proc.stdout)["benchmarks"]]
    expected = sorted(
        ["smoke", *(p.stem.removeprefix("bench_") for p in (REPO / "bench").glob("bench_*.py"))]
    )
    assert sorted(names) == expected


def test_bench_quick_in_the_repo(tmp_path: Path) -> None:
    """`dspex bench --quick` from the checkout: the built-in smoke numbers plus two real quick scripts.

    Named explicitly: quick mode over every script (serve, ray, quality, ...) takes minutes;
    which scripts an unnamed quick run selects is covered with a fake bench dir above."""
    proc = dspex("bench", "--quick", "--json", "smoke", "core", "pool", cwd=REPO, env=clean_env(tmp_path), timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["quick"] is True
    assert [r["name"] for r in doc["results"]] == ["smoke", "core", "pool"]
    assert all(r["status"] == "ok" for r in doc["results"])
    smoke = doc["results"][0]
    whats = {r["what"] for r in smoke["rows"]}
    assert any("pool echo" in w for w in whats) and any("Predict" in w for w in whats)
    assert all(r["us"] > 0 for r in smoke["rows"])


def test_lm_serve_with_a_missing_model_file(workdir: Path, tmp_path: Path) -> None:
    env = clean_env(workdir, DSPEX_LOCAL_MODEL=str(tmp_path / "gone.gguf"))
    assert_one_line_error(dspex("lm", "serve", cwd=workdir, env=env), 3, "gone.gguf")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_lm_serve_status_predict_stop(workdir: Path) -> None:
    """The real embedded model: serve (detached), status, predict with no LM configured, stop."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'dspex[local]')")
    env = clean_env(workdir)
    try:
        proc = dspex("lm", "serve", "--json", cwd=workdir, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["healthy"] is True and info["base_url"].startswith("http://127.0.0.1:")

        proc = dspex("lm", "status", cwd=workdir, env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"running at {info['base_url']}" in proc.stdout

        # No --lm, no config: predict uses the embedded model (the server just started).
        proc = dspex(
            "predict", "question -> answer", "question=Say hi.", "--json", cwd=workdir, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert isinstance(doc["outputs"]["answer"], str)
        assert doc["usage"]["calls"] >= 1
    finally:
        stop = dspex("lm", "stop", cwd=workdir, env=env)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    proc = dspex("lm", "status", cwd=workdir, env=env)
    assert proc.returncode == 3 and "not running" in proc.stdout
