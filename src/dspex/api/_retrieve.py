"""Retrieval: ``retrieve`` / ``aretrieve`` (the ``source=`` forms are in the package doc)."""

from __future__ import annotations

from typing import Any

from ..router import decide
from ..router.dispatch import arun_retrieve, run_retrieve
from ..router.retrieval import source_of


def retrieve(query: str, k: int = 5, *, source: Any = None, impl: str | None = None, pool: Any = None,
             embedder: str = "hash") -> list[dict[str, Any]]:
    """The ``k`` best passages for ``query``: ``[{"text", "pid", "score"}]`` (see the module doc)."""
    kind, target = source_of(source)
    d = decide("retrieve", None, impl=impl, source_kind=kind)
    return run_retrieve(d, kind, target, query, k, embedder=embedder, pool=pool)


async def aretrieve(query: str, k: int = 5, *, source: Any = None, impl: str | None = None, pool: Any = None,
                    embedder: str = "hash") -> list[dict[str, Any]]:
    """The async form of :func:`retrieve`."""
    kind, target = source_of(source)
    d = decide("retrieve", None, impl=impl, source_kind=kind)
    return await arun_retrieve(d, kind, target, query, k, embedder=embedder, pool=pool)
