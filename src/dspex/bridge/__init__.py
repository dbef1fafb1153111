"""The bridge: DSPy exposed as pool handlers. Runs inside worker processes only.

    dspy_handlers.py  the handlers (``dspy.run``, ``dspy.create``/``call``/``get_state``/
                      ``set_state``/``delete``, ``dspy.optimize``, ``dspy.embed_search``,
                      ``dspy.colbert_search``, ``dspy.ping``): their names are the contract
    _lm.py            a ``dspy.LM`` from an ``LM.to_spec()`` dict (keys from the environment)
    _convert.py       signatures, examples and values across the process boundary
    _optimize.py      the optimizers, with progress, cancellation and checkpoints
    _retrieval.py     dense retrieval (dspy.retrievers.Embeddings) with local embedders

Nothing here is imported by ``import dspex``; the host never imports DSPy.
"""
