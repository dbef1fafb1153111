"""`import dspex` and the native core stay light: no DSPy, no pydantic."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import sys
import dspex
from dspex.native.signature import signature
from dspex.native.adapters import ChatAdapter, JSONAdapter
from dspex.native.template import Template
from dspex.native.values import Example, Prediction
sig = signature("context: list[str], question -> answer: int, why: dict[str, list[float]]")
msgs = ChatAdapter().format(sig, [Example(context=["c"], question="q", answer=1, why={})], {"question": "q"})
JSONAdapter().format(sig, [], {"question": "q"})
ChatAdapter().parse(sig, "[[ ## answer ## ]]\\n7.0\\n[[ ## why ## ]]\\n{'a': [1]}")
JSONAdapter().parse(sig, '```json\\n{"answer": "3", "why": {}}\\n```')
Template("{question}", sig).render(question="x")
heavy = [m for m in ("dspy", "pydantic", "json_repair", "litellm") if m in sys.modules]
assert not heavy, heavy
print("ok")
"""


@pytest.mark.timeout(60)
def test_import_and_use_stay_light() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.timeout(60)
def test_bare_import() -> None:
    code = "import dspex, sys; assert 'dspy' not in sys.modules and 'pydantic' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
