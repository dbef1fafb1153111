"""Retrieval: native BM25 (hand-checked), the ColBERTv2-protocol server, dense retrieval in a worker."""

from __future__ import annotations

import math

import pytest

import dspex
from dspex.native.colbert_server import ColBERTv2Server
from dspex.native.retrieve import BM25, load_corpus, tokenize

pytestmark = pytest.mark.timeout(60)

DOCS = ["the red planet mars", "mars has two moons", "jupiter is a giant planet with many moons"]


def bm25_by_hand(query: str, docs: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    toks = [tokenize(d) for d in docs]
    avgdl = sum(map(len, toks)) / len(toks)
    n = len(docs)
    out = []
    for t in toks:
        s = 0.0
        for q in set(tokenize(query)):
            df = sum(q in d for d in toks)
            if not df or q not in t:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            f = t.count(q)
            s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(t) / avgdl))
        out.append(s)
    return out


def test_bm25_scores_match_the_formula() -> None:
    index = BM25(DOCS)
    for query in ("mars moons", "planet", "giant moons of jupiter"):
        expected = bm25_by_hand(query, DOCS)
        hits = index.search(query, k=3)
        assert [h["pid"] for h in hits] == sorted((i for i in range(3) if expected[i] > 0), key=lambda i: -expected[i])
        for h in hits:
            assert h["score"] == pytest.approx(expected[h["pid"]])
            assert h["text"] == DOCS[h["pid"]]


def test_bm25_hand_values_and_edges() -> None:
    index = BM25(DOCS)
    # "two" appears once in one doc of 3 tokens (avgdl = (3 + 3 + 5) / 3): worked out on paper.
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    tf_part = 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 3 / (11 / 3)))
    assert index.search("two", 1)[0]["score"] == pytest.approx(idf * tf_part)
    assert index.search("saturn", 5) == []  # no shared term: nothing returned
    assert index.search("mars", 0) == []
    assert len(index.search("moons planet mars", 2)) == 2
    tied = BM25(["alpha beta", "alpha beta"]).search("alpha", 2)
    assert [h["pid"] for h in tied] == [0, 1]  # ties keep corpus order
    with_ids = BM25([{"text": "Io is volcanic", "pid": "io", "title": "Io"}]).search("volcanic", 1, with_meta=True)
    assert with_ids[0]["pid"] == "io" and with_ids[0]["title"] == "Io"


def test_shipped_corpus_and_retrieve_api() -> None:
    corpus = load_corpus("solar_system")
    assert 100 <= len(corpus) <= 300 and all("text" in c for c in corpus)
    hits = dspex.retrieve("tallest volcano in the solar system", k=3)
    assert "Olympus Mons" in hits[0]["text"]
    assert dspex.retrieve("moons of mars", k=2, source=BM25(DOCS))[0]["pid"] == 1
    assert dspex.retrieve("moons of mars", k=1, source=DOCS)[0]["text"] == DOCS[1]
    assert dspex.explain("retrieve", source="bm25:solar_system").impl == "native"


def test_colbert_server_with_dspy_client_in_process_and_worker(dspy_pool) -> None:
    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    index = BM25.from_path("solar_system")
    with ColBERTv2Server(index) as server:
        direct = index.search("Which moon has its own magnetic field?", 3)
        # DSPy's own client, in this process (GET and POST) ...
        for post in (False, True):
            got = dspy.ColBERTv2(url=server.url, post_requests=post)("Which moon has its own magnetic field?", k=3)
            assert [g["pid"] for g in got] == [d["pid"] for d in direct]
            assert got[0]["long_text"] == direct[0]["text"] and "Ganymede" in got[0]["text"]
        # ... in a worker (dspy.ColBERTv2 there), and natively through dspex.retrieve: the same index.
        in_worker = dspex.retrieve("Which moon has its own magnetic field?", k=3, source=f"colbert:{server.url}",
                                   impl="dspy", pool=dspy_pool)
        native = dspex.retrieve("Which moon has its own magnetic field?", k=3, source=f"colbert:{server.url}")
        assert [h["pid"] for h in in_worker] == [h["pid"] for h in native] == [d["pid"] for d in direct]
        assert native[0]["score"] == pytest.approx(direct[0]["score"])
        assert server.requests_served >= 4


async def test_dense_retrieval_in_worker(dspy_pool) -> None:
    assert dspex.explain("retrieve", source="dense:solar_system").impl == "dspy"
    hits = dspex.retrieve("tallest volcano on Mars", k=3, source="dense:solar_system", pool=dspy_pool)
    assert len(hits) == 3 and "Olympus Mons" in hits[0]["text"]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    ahits = await dspex.aretrieve("comet lander Philae", k=1, source="dense:solar_system", pool=dspy_pool)
    assert "Philae" in ahits[0]["text"]
    listed = dspy_pool.call("dspy.embed_search", query="giant planet", k=1, corpus=DOCS)
    assert listed[0]["pid"] == 2
    with pytest.raises(dspex.ImplementationUnavailable):
        dspex.retrieve("x", source="dense:solar_system", impl="native")
