"""Metrics imported inside workers by "module:function" (the pool's PYTHONPATH has this folder)."""

from typing import Any


def lenient(example: Any, prediction: Any, trace: Any = None) -> float:
    return 1.0 if getattr(prediction, "answer", None) else 0.0
