"""Fixtures for the native-core tests: real DSPy 3.4.1 as the oracle (cache off)."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def dspy() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dspy as _dspy

    _dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    assert _dspy.__version__ == "3.4.1", _dspy.__version__
    return _dspy
