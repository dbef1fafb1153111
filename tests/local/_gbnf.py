"""llama.cpp's own GBNF engine, driven through ctypes, for grammar unit tests.

``GrammarChecker`` loads only the vocabulary of the embedded model (no weights),
compiles grammars with ``llama_sampler_init_grammar`` (NULL = parse error) and
checks whether a text is a complete sentence of a grammar by feeding its tokens
one at a time through the grammar sampler.
"""

from __future__ import annotations

import ctypes
from typing import Any


class GrammarChecker:
    def __init__(self, model_path: str) -> None:
        import llama_cpp.llama_cpp as capi

        self.capi = capi
        params = capi.llama_model_default_params()
        params.vocab_only = True
        self.model = capi.llama_model_load_from_file(model_path.encode(), params)
        if not self.model:
            raise RuntimeError(f"cannot load vocab of {model_path}")
        self.vocab = capi.llama_model_get_vocab(self.model)
        self.eos = capi.llama_vocab_eos(self.vocab)
        self.eot = capi.llama_vocab_eot(self.vocab)

    def close(self) -> None:
        if self.model:
            self.capi.llama_model_free(self.model)
            self.model = None

    def _sampler(self, grammar: str) -> Any:
        return self.capi.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")

    def compiles(self, grammar: str) -> bool:
        smpl = self._sampler(grammar)
        if not smpl:
            return False
        self.capi.llama_sampler_free(smpl)
        return True

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (ctypes.c_int32 * (len(data) + 8))()
        n = self.capi.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return list(buf[:n])

    def _allowed(self, smpl: Any, token: int) -> bool:
        capi = self.capi
        arr = (capi.llama_token_data * 1)()
        arr[0].id = token
        arr[0].logit = 0.0
        arr[0].p = 0.0
        cur = capi.llama_token_data_array(data=arr, size=1, selected=-1, sorted=False)
        capi.llama_sampler_apply(smpl, ctypes.byref(cur))
        return bool(arr[0].logit > -1e30)

    def accepts(self, grammar: str, text: str) -> bool:
        """True when ``text`` is a complete sentence of ``grammar`` (then end-of-text is allowed)."""
        smpl = self._sampler(grammar)
        if not smpl:
            raise ValueError("grammar does not compile")
        try:
            for tok in self.tokenize(text):
                if not self._allowed(smpl, tok):
                    return False
                self.capi.llama_sampler_accept(smpl, tok)
            return self._allowed(smpl, self.eos) or self._allowed(smpl, self.eot)
        finally:
            self.capi.llama_sampler_free(smpl)
