"""The seed's research assistant: native and DSPy-in-worker steps, in sequence and in parallel.

    1. native   "question -> search_queries: list[str]"         (dspex Predict, in process)
    2. worker   dspy.ChainOfThought refines the queries         (DSPy, in the `dspy` pool)
    3. parallel native BM25 | worker dense retrieval | worker ColBERTv2-protocol retrieval
    4. native   merge the passages
    5. worker   dspy.ChainOfThought synthesis, optimized once with MIPROv2 (state saved to a file)
    6. native   markdown formatter

    python examples/research_assistant.py [--question "..."] [--api-base URL]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspex
from _common import print_trace, setup
from dspex.native.colbert_server import ColBERTv2Server
from dspex.native.retrieve import BM25

SYNTHESIS = "question, context: list[str] -> answer"
PROGRAM = Path(__file__).resolve().parent / "research_program.json"
TRAIN = [  # questions about the shipped corpus, with the word a good answer contains
    {"question": "Which planet is closest to the Sun?", "answer": "Mercury"},
    {"question": "Which planet has the Great Red Spot?", "answer": "Jupiter"},
    {"question": "What is the largest moon of Saturn?", "answer": "Titan"},
    {"question": "Which planet is known as the Red Planet?", "answer": "Mars"},
]
_bm25 = BM25.from_path("solar_system")


def bm25_search(question: str, refined_queries: list[str]) -> list[str]:
    """Native BM25 over the shipped corpus, for the question and every refined query."""
    hits = [h["text"] for q in [question, *refined_queries] for h in _bm25.search(str(q), 2)]
    return list(dict.fromkeys(hits))


def merge(bm25_passages: list[str], dense_hits: list[dict[str, Any]], colbert_hits: list[dict[str, Any]]) -> list[str]:
    texts = [*bm25_passages, *(h["text"] for h in dense_hits), *(h["text"] for h in colbert_hits)]
    return list(dict.fromkeys(texts))[:6]


def to_markdown(question: str, answer: str, context: list[str]) -> str:
    sources = "\n".join(f"{i}. {t}" for i, t in enumerate(context[:3], 1))
    return f"## {question}\n\n{answer}\n\n**Sources**\n{sources}\n"


def answer_match(example: Any, prediction: Any) -> float:
    return float(example["answer"].lower() in str(prediction["answer"]).lower())


def optimize_synthesis(lm: Any, path: Path) -> None:
    """Optimize the synthesis program with MIPROv2 once; later runs reuse the saved state."""
    if path.exists():
        return
    trainset = [{**ex, "context": bm25_search(ex["question"], [])} for ex in TRAIN]
    result = dspex.optimize(dspex.ChainOfThought(SYNTHESIS), trainset, optimizer="miprov2",
                            metric=answer_match, lm=lm, auto=None, num_candidates=2, num_trials=2,
                            max_bootstrapped_demos=1, max_labeled_demos=1, minibatch=False)
    path.write_text(json.dumps(result.state))
    print(f"optimized the synthesis program with MIPROv2 (score {result.score}); saved {path}")


def build(colbert_url: str, program: Path) -> dspex.Pipeline:
    return dspex.pipeline([
        dspex.native("question -> search_queries: list[str]", name="plan"),
        dspex.worker("dspy.ChainOfThought", signature="question, search_queries -> refined_queries: list[str]",
                     pool="dspy", name="refine"),
        dspex.parallel([
            dspex.native(bm25_search, writes="bm25_passages", name="bm25"),
            dspex.worker(handler="dspy.embed_search", pool="dspy", reads={"query": "question"},
                         params={"k": 3}, writes="dense_hits", name="dense"),
            dspex.worker(handler="dspy.colbert_search", pool="dspy", reads={"query": "question"},
                         params={"url": colbert_url, "k": 3}, writes="colbert_hits", name="colbertv2"),
        ], name="retrieve"),
        dspex.native(merge, writes="context"),
        dspex.worker("dspy.ChainOfThought", signature=SYNTHESIS, pool="dspy", state=str(program),
                     name="synthesize", retries=1),
        dspex.native(to_markdown, writes="markdown"),
    ], name="research_assistant")


def main(argv: list[str] | None = None, *, lm: Any = None, program: Path | None = None) -> dspex.pipeline.PipelineResult:
    def options(p: Any) -> None:
        p.add_argument("--question", default="Which planet has the most moons, and what is its largest moon?")
        p.add_argument("--program", type=Path, default=PROGRAM, help="the optimized synthesis state (JSON)")
        p.add_argument("--reoptimize", action="store_true", help="optimize again even if the file exists")

    args, lm = setup(__doc__.splitlines()[0], argv, lm, options)
    program = program or args.program
    if args.reoptimize and program.exists():
        program.unlink()
    optimize_synthesis(lm, program)
    with ColBERTv2Server("solar_system") as colbert:
        result = build(colbert.url, program).run(question=args.question, lm=lm)
    print(result["markdown"])
    print_trace(result.trace)
    return result


if __name__ == "__main__":
    main()
