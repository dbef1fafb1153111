"""BM25 over a local corpus, in process.

Small and fast on purpose: an inverted index of precomputed per-posting weights,
so a query costs one dict lookup per query term plus a sum over its postings,
and top-k is a heap selection. No dependencies beyond the standard library.

    bm25 = BM25(["Mars has two moons.", {"text": "Io is volcanic.", "pid": "io"}])
    bm25.search("moons of mars", k=3)  # -> [{"text", "pid", "score"}, ...]

Corpus helpers: ``load_corpus(name_or_path)`` reads a shipped corpus by name
(``"solar_system"``, the default) or a ``.jsonl`` / ``.json`` / ``.txt`` file.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BM25", "DEFAULT_CORPUS", "corpus_path", "load_corpus", "tokenize"]

DEFAULT_CORPUS = "solar_system"

_TOKEN = re.compile(r"\w+", re.UNICODE)
# A short list: enough to stop "the"/"of" from dominating scores, small enough to
# keep short queries ("is it", "what is") meaningful.
_STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "into", "is", "it", "its", "of", "on", "or", "that", "the", "their", "this", "to", "was", "were", "which", "with"]
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stopwords (the same rule for documents and queries)."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def _doc_text_pid(doc: Any, index: int) -> tuple[str, Any, dict[str, Any]]:
    if isinstance(doc, str):
        return doc, index, {}
    if isinstance(doc, dict):
        text = doc.get("text", doc.get("long_text"))
        if not isinstance(text, str):
            raise ValueError(f"corpus entry {index} has no 'text' string: {doc!r:.80}")
        pid = doc.get("pid", doc.get("id", index))
        meta = {k: v for k, v in doc.items() if k not in ("text", "long_text", "pid", "id")}
        return text, pid, meta
    raise TypeError(f"corpus entries must be str or dict with 'text', not {type(doc).__name__}")


class BM25:
    """Okapi BM25 (Lucene's non-negative idf) over ``corpus``.

    ``corpus`` is a list of strings or of dicts with ``text`` (and optional ``pid``
    / ``id``, kept as the passage id; other keys are kept as metadata and returned
    when ``search(..., with_meta=True)``).
    """

    __slots__ = ("_postings", "avgdl", "b", "k1", "meta", "n_docs", "pids", "texts")

    def __init__(self, corpus: Iterable[str | dict[str, Any]], *, k1: float = 1.5, b: float = 0.75):
        self.k1 = k1
        self.b = b
        self.texts: list[str] = []
        self.pids: list[Any] = []
        self.meta: list[dict[str, Any]] = []
        term_freqs: list[dict[str, int]] = []
        lengths: list[int] = []
        for i, doc in enumerate(corpus):
            text, pid, meta = _doc_text_pid(doc, i)
            tokens = tokenize(text)
            tf: dict[str, int] = {}
            for tok in tokens:
                tf[tok] = tf.get(tok, 0) + 1
            self.texts.append(text)
            self.pids.append(pid)
            self.meta.append(meta)
            term_freqs.append(tf)
            lengths.append(len(tokens))
        self.n_docs = len(self.texts)
        self.avgdl = (sum(lengths) / self.n_docs) if self.n_docs else 0.0
        # term -> (idf, [(doc index, saturated tf weight)]): scoring is then a sum of idf * w.
        postings: dict[str, list[tuple[int, float]]] = {}
        for i, tf in enumerate(term_freqs):
            norm = k1 * (1.0 - b + b * (lengths[i] / self.avgdl if self.avgdl else 0.0))
            for term, f in tf.items():
                postings.setdefault(term, []).append((i, f * (k1 + 1.0) / (f + norm)))
        n = self.n_docs
        self._postings: dict[str, tuple[float, list[tuple[int, float]]]] = {
            term: (math.log(1.0 + (n - len(plist) + 0.5) / (len(plist) + 0.5)), plist)
            for term, plist in postings.items()
        }

    def __len__(self) -> int:
        return self.n_docs

    def idf(self, term: str) -> float:
        entry = self._postings.get(term.lower())
        return entry[0] if entry else 0.0

    def scores(self, query: str) -> dict[int, float]:
        """Score of every document that shares a term with ``query`` (doc index -> score)."""
        acc: dict[int, float] = {}
        for term in set(tokenize(query)):
            entry = self._postings.get(term)
            if entry is None:
                continue
            idf, plist = entry
            for i, w in plist:
                acc[i] = acc.get(i, 0.0) + idf * w
        return acc

    def search(self, query: str, k: int = 5, *, with_meta: bool = False) -> list[dict[str, Any]]:
        """The ``k`` best passages, best first: ``[{"text", "pid", "score"}]``.

        Ties are broken by corpus order, so results are deterministic. Passages
        sharing no term with the query are never returned.
        """
        if k <= 0:
            return []
        acc = self.scores(query)
        best = heapq.nlargest(k, acc.items(), key=lambda item: (item[1], -item[0]))
        out = []
        for i, score in best:
            row: dict[str, Any] = {"text": self.texts[i], "pid": self.pids[i], "score": score}
            if with_meta and self.meta[i]:
                row.update(self.meta[i])
            out.append(row)
        return out

    def __call__(self, query: str, k: int = 5) -> list[dict[str, Any]]:
        return self.search(query, k)

    @classmethod
    def from_path(cls, name_or_path: str | Path, **kwargs: Any) -> BM25:
        return cls(load_corpus(name_or_path), **kwargs)


def corpus_path(name: str = DEFAULT_CORPUS) -> Path:
    """Path of a corpus shipped in ``dspex/data/corpus/`` (``<name>.jsonl``)."""
    return Path(__file__).resolve().parent.parent / "data" / "corpus" / f"{name}.jsonl"


def load_corpus(name_or_path: str | Path = DEFAULT_CORPUS) -> list[dict[str, Any]]:
    """Read a corpus: a shipped name, or a ``.jsonl`` (one object with ``text`` per line),
    ``.json`` (a list of strings or objects) or ``.txt`` (passages separated by blank lines).
    """
    path = Path(name_or_path)
    if not path.exists():
        shipped = corpus_path(str(name_or_path))
        if not shipped.exists():
            raise FileNotFoundError(
                f"no corpus {str(name_or_path)!r}: not a file, and not a shipped corpus "
                f"(shipped: {', '.join(sorted(p.stem for p in shipped.parent.glob('*.jsonl')))})"
            )
        path = shipped
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    rows: Sequence[Any]
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif suffix == ".json":
        rows = json.loads(text)
    else:
        rows = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            out.append({"text": row, "pid": i})
        else:
            item = dict(row)
            item.setdefault("pid", item.get("id", i))
            out.append(item)
    return out
