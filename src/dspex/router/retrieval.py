"""Retrieval sources and their two runners: native (BM25 corpora, ColBERTv2 over HTTP,
Python objects) and the worker request (dense indexes, dspy.ColBERTv2).

``source=`` forms: ``"bm25:<corpus>"``, ``"dense:<corpus>"``, ``"colbert:<url>"``, a BM25 /
``.search()`` object, a callable ``(query, k)``, or a list of passages."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ImplementationUnavailable
from ..native._memo import Memo
from ..settings import load_config
from ..wire import H

__all__ = ["retrieve_native", "source_of", "worker_request"]

_bm25s: Memo[Any] = Memo(8)


def _bm25(name: str) -> Any:
    from ..native.retrieve import BM25

    return _bm25s.get(name, lambda: BM25.from_path(name))


def source_of(source: Any) -> tuple[str, Any]:
    """(kind, target) for a ``source=`` value."""
    if source is None:
        source = (load_config().get("retrieve") or {}).get("source", "bm25:solar_system")
    if isinstance(source, str):
        kind, sep, target = source.partition(":")
        if not sep or kind not in ("bm25", "dense", "colbert"):
            raise ValueError(f"source {source!r}: use 'bm25:<corpus>', 'dense:<corpus>' or 'colbert:<url>'")
        return kind, target or ("solar_system" if kind != "colbert" else "")
    if isinstance(source, list):
        return "corpus", source
    if hasattr(source, "search") or callable(source):
        return "object", source
    raise TypeError(f"unsupported retrieval source {type(source).__name__}")


def _normalize_hits(hits: Any, k: int) -> list[dict[str, Any]]:
    out = []
    for i, h in enumerate(list(hits)[:k]):
        if isinstance(h, str):
            out.append({"text": h, "pid": i, "score": None})
        else:
            d = dict(h)
            out.append({"text": d.get("text", d.get("long_text")), "pid": d.get("pid", i), "score": d.get("score")})
    return out


def _colbert_http(url: str, query: str, k: int) -> list[dict[str, Any]]:
    import urllib.parse
    import urllib.request  # here, not at import: it pulls in ssl and http.client

    q = urllib.parse.urlencode({"query": query, "k": k})
    with urllib.request.urlopen(f"{url}{'&' if '?' in url else '?'}{q}", timeout=10) as resp:
        body = json.loads(resp.read())
    if body.get("error"):
        raise RuntimeError(f"ColBERTv2 server error: {body.get('message')}")
    return _normalize_hits(body.get("topk", []), k)


def retrieve_native(kind: str, target: Any, query: str, k: int) -> list[dict[str, Any]]:
    if kind == "bm25":
        return list(_bm25(target).search(query, k))
    if kind == "colbert":
        return _colbert_http(target, query, k)
    if kind == "corpus":
        from ..native.retrieve import BM25

        return BM25(target).search(query, k)
    if hasattr(target, "search"):
        return _normalize_hits(target.search(query, k), k)
    return _normalize_hits(target(query, k), k)


def worker_request(kind: str, target: Any, query: str, k: int, embedder: str) -> tuple[str, dict[str, Any]]:
    if kind == "colbert":
        return H.COLBERT_SEARCH, {"url": target, "query": query, "k": k}
    if kind in ("dense", "bm25", "corpus"):
        return H.EMBED_SEARCH, {"query": query, "k": k, "corpus": target, "embedder": embedder}
    raise ImplementationUnavailable("retrieval from a Python object runs natively only")
