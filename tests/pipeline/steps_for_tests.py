"""Module-level step functions, so saved pipelines can reference them by import path."""

from __future__ import annotations

from typing import Any


def make_queries(question: str) -> list[str]:
    return question.split()


def shout(query: str) -> str:
    return query.upper()


def count(queries: list[str]) -> int:
    return len(queries)


def is_long(data: dict[str, Any]) -> bool:
    return len(data["louder"]) > 5


def summarize(louder: list[str]) -> str:
    return " ".join(louder[:3]) + "..."


def keep(louder: list[str]) -> str:
    return " ".join(louder)
