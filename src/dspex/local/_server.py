"""Entry point of the embedded model server process (``python -m dspex.local._server``).

It arms the parent-death signal, then runs ``llama_cpp.server`` in this same
interpreter. Arming it here (not in a ``preexec_fn``) avoids forking with a
callback in a threaded host; the signal survives the ``runpy`` hand-over because
there is no exec. ``--dspex-parent-pid`` names the process whose death must kill
this server; it is absent for a detached server (``dspex lm serve --detach``).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def arm_parent_death_signal(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when our parent dies (Linux); exit if it already has."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    # The parent may have died between fork and prctl: then nobody would signal us.
    if os.getppid() != parent_pid:
        os._exit(0)


def disable_extra_buffer_types() -> None:
    """Load weights into plain CPU buffers, not the AMX/repack "extra" buffer types.

    With llama-cpp-python 0.3.36 on AMX-capable Xeons, the AMX matmul segfaults on
    the first decode of SmolLM2's Q4_1 weights. ``llama_cpp.server`` has no switch
    for ``use_extra_bufts``, so wrap the default-params factory the server's ``Llama``
    reads. ``DSPEX_LOCAL_EXTRA_BUFTS=1`` turns them back on.
    """
    if os.environ.get("DSPEX_LOCAL_EXTRA_BUFTS", "").strip() in ("1", "true", "yes"):
        return
    import llama_cpp.llama_cpp as capi

    original = capi.llama_model_default_params

    def params() -> Any:
        p = original()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    capi.llama_model_default_params = params


def guard_grammar() -> None:
    """Answer an unparsable GBNF grammar with an error instead of a segfault.

    llama-cpp-python adds the grammar sampler without checking for NULL (what
    llama.cpp returns for a grammar it cannot parse), so one bad ``grammar`` field
    would kill the server every process shares. Check it, and raise: the server
    turns the exception into an error response and keeps running.
    """
    from llama_cpp import _internals

    capi = _internals.llama_cpp

    def add_grammar(self: Any, model: Any, grammar: Any) -> None:
        sampler = capi.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not sampler:
            raise ValueError(
                "invalid GBNF grammar: llama.cpp could not parse it (its parse error is in the server log)"
            )
        capi.llama_sampler_chain_add(self.sampler, sampler)

    _internals.LlamaSampler.add_grammar = add_grammar  # type: ignore[method-assign]


class _GreedyGrammar:
    """Greedy decoding under a grammar, checking the best token first.

    llama.cpp's grammar sampler tests all 49k vocabulary entries every step (~60 ms
    here, 2-3x the model's own time per token). Under greedy decoding the winner is
    the highest-logit token the grammar allows, so test the unconstrained argmax
    alone first (microseconds) and filter the whole vocabulary only when the grammar
    rejects it. Same tokens as the plain grammar sampler (ties aside).
    """

    def __init__(self, capi: Any, vocab: Any, grammar: Any) -> None:
        import ctypes

        import numpy as np

        self.capi = capi
        self.g = capi.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self.g:
            raise ValueError(
                "invalid GBNF grammar: llama.cpp could not parse it (its parse error is in the server log)"
            )
        dtype = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True)
        assert dtype.itemsize == ctypes.sizeof(capi.llama_token_data)
        one = (capi.llama_token_data * 1)()
        one_arr = capi.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)

        def apply(_smpl: Any, cur_p: Any) -> None:
            try:
                cur = cur_p.contents
                n = int(cur.size)
                view = np.ctypeslib.as_array(
                    (ctypes.c_char * (n * dtype.itemsize)).from_address(ctypes.addressof(cur.data.contents))
                ).view(dtype)
                i = int(np.argmax(view["logit"]))
                one[0].id = int(view["id"][i])
                one[0].logit = 0.0
                one[0].p = 0.0
                one_arr.size = 1
                one_arr.selected = -1
                capi.llama_sampler_apply(self.g, ctypes.byref(one_arr))
                if one[0].logit > -3.0e38:  # the grammar allows the argmax: it is the answer
                    view[0] = view[i]
                    cur.size = 1
                    cur.selected = -1
                    cur.sorted = False
                    return
            except Exception:  # never let a shortcut bug leave the reply unconstrained
                pass
            capi.llama_sampler_apply(self.g, cur_p)

        def accept(_smpl: Any, token: int) -> None:
            capi.llama_sampler_accept(self.g, token)

        def reset(_smpl: Any) -> None:
            capi.llama_sampler_reset(self.g)

        iface = capi.llama_sampler_i()
        iface.apply = capi.llama_sampler_i_apply(apply)
        iface.accept = capi.llama_sampler_i_accept(accept)
        iface.reset = capi.llama_sampler_i_reset(reset)
        iface.name = capi.llama_sampler_i_name(0)
        iface.clone = capi.llama_sampler_i_clone(0)
        iface.free = capi.llama_sampler_i_free(0)
        self._keep = (apply, accept, reset, iface, one, one_arr)  # callbacks must outlive the sampler
        self.sampler = capi.llama_sampler()
        self.sampler.iface = ctypes.pointer(iface)
        self.sampler.ctx = None

    def close(self) -> None:
        if self.g:
            self.capi.llama_sampler_free(self.g)
            self.g = None


def fast_greedy_grammar() -> None:
    """Build greedy+grammar sampler chains as penalties -> _GreedyGrammar -> greedy."""
    import ctypes

    from llama_cpp import _internals
    from llama_cpp.llama import Llama

    capi = _internals.llama_cpp
    original = Llama._init_sampler

    def init_sampler(self: Any, **kw: Any) -> Any:
        grammar = kw.get("grammar")
        if (
            grammar is None
            or kw.get("temp", 0.8) != 0.0
            or kw.get("mirostat_mode", 0)
            or kw.get("logits_processor") is not None
        ):
            return original(self, **kw)
        sampler = original(self, **{**kw, "grammar": None})  # [penalties, greedy]
        chain = sampler.sampler
        n = capi.llama_sampler_chain_n(chain)
        greedy = capi.llama_sampler_chain_remove(chain, n - 1)
        fast = _GreedyGrammar(capi, self._model.vocab, grammar)
        capi.llama_sampler_chain_add(chain, ctypes.pointer(fast.sampler))
        # llama-cpp-python removes custom samplers (by index) before freeing the chain
        sampler.custom_samplers.append((capi.llama_sampler_chain_n(chain) - 1, fast))
        capi.llama_sampler_chain_add(chain, greedy)
        sampler._exit_stack.callback(fast.close)  # runs before the chain is freed (LIFO)
        return sampler

    Llama._init_sampler = init_sampler  # type: ignore[method-assign,assignment]


def bounded_prompt_cache() -> None:
    """Keep the RAM prompt cache within its ``--cache_size``.

    llama-cpp-python's ``LlamaRAMCache`` counts only each entry's KV bytes, but every
    saved ``LlamaState`` also copies the logits rows: up to n_batch x n_vocab floats,
    311 MB per entry with Qwen2.5's 151,936-token vocabulary. Measured: during a MIPROv2
    run the server grew to 23.7 GB and the kernel OOM-killed it. With ``logits_all`` off
    the saved rows are never read: a restored state re-decodes at least its last prompt
    token before sampling (``_requires_eval``, prefix reuse stops one token short). So
    keep one row (``load_state`` broadcasts it) and count every byte an entry holds.
    """
    from llama_cpp import llama_cache
    from llama_cpp.llama import Llama, LlamaState

    original = Llama.save_state

    def save_state(self: Any) -> LlamaState:
        state = original(self)
        if not self._logits_all and len(state.scores) > 1:
            state.scores = state.scores[-1:].copy()
        return state

    def cache_size(self: Any) -> int:
        return sum(entry_bytes(state) for state in self.cache_state.values())

    Llama.save_state = save_state  # type: ignore[method-assign]
    llama_cache.LlamaRAMCache.cache_size = property(cache_size)  # type: ignore[assignment,method-assign]


def entry_bytes(state: Any) -> int:
    """What one cached prompt state really holds: KV data, logits rows and token ids."""
    return int(state.llama_state_size) + int(state.scores.nbytes) + int(state.input_ids.nbytes)


def main(argv: list[str]) -> None:
    args = list(argv)
    if "--dspex-parent-pid" in args:
        i = args.index("--dspex-parent-pid")
        parent = int(args[i + 1])
        del args[i : i + 2]
        arm_parent_death_signal(parent)
    disable_extra_buffer_types()
    guard_grammar()
    bounded_prompt_cache()
    if os.environ.get("DSPEX_LOCAL_FAST_GRAMMAR", "1").strip() not in ("0", "false", "no"):
        fast_greedy_grammar()
    sys.argv = ["llama_cpp.server", *args]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
