"""The implementation-agnostic API: one set of operations, routed native or DSPy per call.

    sig = dspex.signature("question -> answer: int")
    dspex.predict(sig, {"question": "6*7?"})                      # one Prediction
    cot = dspex.chain_of_thought(sig, impl="dspy")                # a module: call with inputs
    cot(question="6*7?").answer                                   # 42 (an int, either way)
    agent = dspex.react("question -> answer", tools=[search, add])
    optimized = dspex.optimize(dspex.Predict(sig), trainset, optimizer="miprov2", metric=exact)
    dspex.retrieve("moons of mars", k=3, source="bm25:solar_system")
    print(dspex.explain("predict", sig, adapter="xml"))           # where, and why

Where a call runs is decided by :mod:`dspex.router` (``impl="auto"|"native"|"dspy"``;
defaults from ``dspex.context(impl=...)`` and config ``[router]`` / ``[router.ops]``).
The DSPy side runs in worker pools (``dspy`` for modules, ``optimizer`` for
optimizers) through the bridge handlers; pass ``pool=`` (a Pool or a
PoolManager) or ``dspex.context(pools={"dspy": pool, ...})`` to choose the pools.
Results come back as dspex ``Prediction`` objects with the same types as native.

Retrieval sources (``source=``):

* ``"bm25:<name or path>"`` (default ``bm25:solar_system``, the shipped corpus):
  native BM25 in process; also a ``BM25`` object, any object with
  ``.search(query, k)``, a callable ``(query, k)``, or a list of passages;
* ``"colbert:<url>"``: a ColBERTv2-protocol server (e.g.
  ``dspex.native.colbert_server.ColBERTv2Server``), queried natively over HTTP, or
  with ``dspy.ColBERTv2`` in a worker when ``impl="dspy"``;
* ``"dense:<name or path>"``: ``dspy.retrievers.Embeddings`` in a worker with a
  local embedder: ``embedder="hash"`` (default, no dependencies), ``"e5"`` (the neural
  multilingual-e5-small of ``dspex[embed]``), ``"auto"`` (e5 when installed, else hash).

Every function here is thin: ``router.decide`` then the router's dispatcher
(``dspex.router.dispatch``), which pipelines use too. What travels to a worker is built
in ``dspex.router.payload``, what comes back is read in ``dspex.router.results``.

Modules, one job each (all private; import from ``dspex.api``):

* ``_signatures``: ``signature``, ``compile_signature``;
* ``_predict``: ``predict``/``apredict``;
* ``_predictor``: the reusable handles ``predictor``, ``chain_of_thought``, ``react``;
* ``_worker_module``: :class:`WorkerModule`, a DSPy module in a worker session;
* ``_optimize``: ``optimize``/``aoptimize``/``optimize_events``, :class:`OptimizeResult`;
* ``_retrieve``: ``retrieve``/``aretrieve``;
* ``_introspect``: ``explain``, ``router_stats``;
* ``_module``: composite programs (``dspex.Module``) routed: ``run_program``/``arun_program``,
  ``explain_program``.
"""

from __future__ import annotations

from ..router.payload import signature_wire as signature_wire  # the bridge's signature wire form
from ..router.tools import tool_spec
from ._introspect import explain, router_stats
from ._module import arun_program, explain_program, run_program
from ._optimize import OptimizeResult, aoptimize, optimize, optimize_events
from ._predict import apredict, predict
from ._predictor import chain_of_thought, predictor, react
from ._retrieve import aretrieve, retrieve
from ._signatures import compile_signature, signature
from ._worker_module import WorkerModule

__all__ = [
    "OptimizeResult",
    "WorkerModule",
    "aoptimize",
    "apredict",
    "aretrieve",
    "arun_program",
    "chain_of_thought",
    "compile_signature",
    "explain",
    "explain_program",
    "optimize",
    "optimize_events",
    "predict",
    "predictor",
    "react",
    "retrieve",
    "router_stats",
    "run_program",
    "signature",
    "tool_spec",
]
