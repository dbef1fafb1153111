"""Fixtures for the embedded-model tests.

Every test here runs against its own state directory (``DSPEX_LOCAL_STATE_DIR``),
so it never adopts or stops a developer's real server, and one real llama.cpp
server (``local_service``) is shared by the whole package to keep startups few.
That server runs SmolLM2-135M (``DSPEX_LOCAL_MODEL=smollm2-135m``): the plumbing
tests only need something fast. Tests of the default model's answers
(test_default_model.py) choose it explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspex.local import LocalModelService, model_path

from ._gbnf import GrammarChecker

FAST_MODEL = "smollm2-135m"


def _server_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "uvicorn", "fastapi"))


needs_llama = pytest.mark.skipif(
    not _server_installed(), reason="llama-cpp-python[server] not installed: pip install 'dspex[local]'"
)


@pytest.fixture(scope="package", autouse=True)
def local_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    saved = {
        k: os.environ.get(k) for k in ("DSPEX_LOCAL_STATE_DIR", "DSPEX_LOCAL_BASE_URL", "DSPEX_LOCAL_MODEL")
    }
    d = tmp_path_factory.mktemp("dspex-local-state")
    os.environ["DSPEX_LOCAL_STATE_DIR"] = str(d)
    os.environ.pop("DSPEX_LOCAL_BASE_URL", None)
    os.environ["DSPEX_LOCAL_MODEL"] = FAST_MODEL
    try:
        yield d
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="package")
def local_service(local_state_dir: Path) -> Iterator[LocalModelService]:
    """One real server for the package (owned by this pytest process)."""
    if not _server_installed():
        pytest.skip("llama-cpp-python[server] not installed: pip install 'dspex[local]'")
    svc = LocalModelService(startup_timeout=120)
    svc.ensure_running()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="package")
def checker() -> Iterator[GrammarChecker]:
    """llama.cpp's grammar engine over the embedded model's vocabulary."""
    if not _server_installed():
        pytest.skip("llama-cpp-python not installed: pip install 'dspex[local]'")
    c = GrammarChecker(str(model_path()))
    try:
        yield c
    finally:
        c.close()
