"""Retrieval: ``retrieve``/``aretrieve`` from BM25 corpora, ColBERTv2 servers, dense
indexes in a worker, or Python objects (the ``source=`` forms are in the package doc)."""

from __future__ import annotations

import contextvars
import json
from typing import Any

from .. import router
from ..errors import ImplementationUnavailable, RemoteError
from ..native._memo import Memo
from ..settings import load_config
from ._pools import _pool
from ._results import _remote

_bm25s: Memo[Any] = Memo(8)


def _bm25(name: str) -> Any:
    from ..native.retrieve import BM25

    return _bm25s.get(name, lambda: BM25.from_path(name))


def _source(source: Any) -> tuple[str, Any]:
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


def _retrieve_native(kind: str, target: Any, query: str, k: int) -> list[dict[str, Any]]:
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


def _retrieve_worker(kind: str, target: Any, query: str, k: int, embedder: str) -> tuple[str, dict[str, Any]]:
    if kind == "colbert":
        return "dspy.colbert_search", {"url": target, "query": query, "k": k}
    if kind in ("dense", "bm25", "corpus"):
        return "dspy.embed_search", {"query": query, "k": k, "corpus": target, "embedder": embedder}
    raise ImplementationUnavailable("retrieval from a Python object runs natively only")


def retrieve(query: str, k: int = 5, *, source: Any = None, impl: str | None = None, pool: Any = None,
             embedder: str = "hash") -> list[dict[str, Any]]:
    """The ``k`` best passages for ``query``: ``[{"text", "pid", "score"}]`` (see the module doc)."""
    kind, target = _source(source)
    d = router.decide("retrieve", None, impl=impl, source_kind=kind)
    with router.track("retrieve", d.impl):
        if d.impl == "native":
            return _retrieve_native(kind, target, query, k)
        handler, kwargs = _retrieve_worker(kind, target, query, k, embedder)
        try:
            return list(_pool("dspy", pool).call_with(handler, kwargs=kwargs))
        except RemoteError as exc:
            raise _remote(exc) from exc


async def aretrieve(query: str, k: int = 5, *, source: Any = None, impl: str | None = None, pool: Any = None,
                    embedder: str = "hash") -> list[dict[str, Any]]:
    kind, target = _source(source)
    d = router.decide("retrieve", None, impl=impl, source_kind=kind)
    with router.track("retrieve", d.impl):
        if d.impl == "native":
            import asyncio

            ctx = contextvars.copy_context()
            return await asyncio.to_thread(ctx.run, _retrieve_native, kind, target, query, k)
        handler, kwargs = _retrieve_worker(kind, target, query, k, embedder)
        try:
            return list(await _pool("dspy", pool).acall(handler, **kwargs))
        except RemoteError as exc:
            raise _remote(exc) from exc
