"""The main job on the real default model, as a fresh machine runs it: a right, clean answer
with sources (content check, not only "it ran"). Four model calls; the quality bench
(bench/bench_quality.py) measures many questions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _default_model_ready() -> str | None:
    import importlib.util

    from dspex.errors import LocalModelError
    from dspex.local import DEFAULT_MODEL, MODELS
    from dspex.local.models import _part_file, install_command

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'dspex[local]')"
    try:
        _part_file(MODELS[DEFAULT_MODEL].parts[0])
    except LocalModelError:
        return f"the default model is not installed: {install_command(MODELS[DEFAULT_MODEL])}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_main_job_answers_right_and_clean_with_sources(tmp_path: Path) -> None:
    reason = _default_model_ready()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env.update(DSPEX_LOCAL_STATE_DIR=str(tmp_path / "state"), LITELLM_LOCAL_MODEL_COST_MAP="True",
               DSPEX_DSPY_CACHE="off")
    cmd = [sys.executable, str(EXAMPLES / "research_assistant.py"), "--question", "How many known moons does Saturn have?"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=560, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "LM: openai/qwen2.5-coder-0.5b-instruct" in out
    answer = out.split("## How many known moons does Saturn have?", 1)[1].split("**Sources**", 1)[0].strip()
    assert "146" in answer, answer
    assert not re.search(r"\{[a-z_]+\}|\[\[ ##|```", answer), answer  # no template echo, no code
    sources = out.split("**Sources**", 1)[1]
    assert re.search(r"^1\. \S", sources, re.M) and "Saturn" in sources
