"""Which model runner an engine gets: the CUDA one (Triton kernels, CUDA graphs) where it can run, else torch.

`LLAMARUN_RUNNER=torch` forces the torch reference runner on a GPU too (the oracle the GPU tests compare
against, and a way around a kernel problem); `LLAMARUN_CUDA_GRAPHS=0` keeps the CUDA runner eager.
"""

from __future__ import annotations

import os

from llamarun.attention.paged_torch import PagedKVCache
from llamarun.engine.runner import ModelRunner
from llamarun.layers.fused import use_kernels
from llamarun.models.llama import LlamaForCausalLM
from llamarun.structured.vocab import GrammarVocab


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def kernels_fit(cache: PagedKVCache) -> bool:
    """Whether the Triton kernels take this cache: a CUDA tensor, power-of-two head_dim (16-256) and blocks."""
    head_dim = cache.k.shape[-1]
    return (use_kernels(cache.k) and _power_of_two(head_dim) and 16 <= head_dim <= 256
            and _power_of_two(cache.block_size) and cache.block_size >= 8)


def make_runner(model: LlamaForCausalLM, cache: PagedKVCache, *, max_tokens: int, max_seqs: int,
                context_length: int, grammar_vocab: GrammarVocab | None = None) -> ModelRunner:
    """The fastest runner this device and model allow."""
    if os.environ.get("LLAMARUN_RUNNER", "") != "torch" and kernels_fit(cache):
        from llamarun.engine.cuda_runner import CudaModelRunner

        graphs = os.environ.get("LLAMARUN_CUDA_GRAPHS", "1") != "0"
        return CudaModelRunner(model, cache, max_tokens=max_tokens, max_seqs=max_seqs,
                               context_length=context_length, use_graphs=graphs, grammar_vocab=grammar_vocab)
    return ModelRunner(model, cache, grammar_vocab)
