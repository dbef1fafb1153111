"""The default embedded model (Qwen2.5-Coder-0.5B) as a new user meets it: doctor, then predict.

These run the real 491 MB model: a few short calls (one server start, shared).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex.errors import LocalModelError
from dspex.local import DEFAULT_MODEL, MODELS
from dspex.local.models import _part_file, install_command

from .conftest import needs_llama

SPEC = MODELS[DEFAULT_MODEL]


def _parts_installed() -> bool:
    try:
        _part_file(SPEC.parts[0])
    except LocalModelError:
        return False
    return True


needs_parts = pytest.mark.skipif(
    not _parts_installed(), reason=f"default model not installed: {install_command(SPEC)}"
)


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["DSPEX_LOCAL_STATE_DIR"] = str(state)  # its own server, never a developer's
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    return env


def _dspex(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dspex.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@needs_parts
@pytest.mark.timeout(60)
def test_doctor_reports_the_default_model_and_its_checksum(tmp_path: Path) -> None:
    proc = _dspex("doctor", "--json", "--no-network", env=_env(tmp_path))
    doc = json.loads(proc.stdout)
    check = next(c for c in doc["checks"] if c["name"] == "model file")
    assert check["status"] == "ok", check
    assert DEFAULT_MODEL in check["detail"] and SPEC.sha256 in check["detail"]
    assert "Apache-2.0" in check["detail"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A detached default-model server for this module, stopped at the end."""
    env = _env(tmp_path_factory.mktemp("default-model-state"))
    proc = _dspex("lm", "serve", "--json", env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr
    try:
        yield env
    finally:
        _dspex("lm", "stop", env=env, timeout=60)


@needs_llama
@needs_parts
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_predict_on_the_default_model_answers_paris(served: dict[str, str]) -> None:
    proc = _dspex(
        "predict", "question -> answer", "question=What is the capital of France?", "--json", env=served
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)["outputs"]["answer"]
    assert "paris" in answer.lower(), answer
    assert "{" not in answer and "```" not in answer


@needs_llama
@needs_parts
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cot_on_the_default_model_reasons_in_prose(served: dict[str, str]) -> None:
    proc = _dspex(
        "predict",
        "question -> answer",
        "question=What is the capital of Japan?",
        "--cot",
        "--json",
        env=served,
    )
    assert proc.returncode == 0, proc.stderr
    outputs = json.loads(proc.stdout)["outputs"]
    assert "tokyo" in outputs["answer"].lower(), outputs
    for text in outputs.values():
        assert "```" not in text and "{answer}" not in text and "def " not in text, outputs
