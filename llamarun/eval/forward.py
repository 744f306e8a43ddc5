"""Logits for every position of one window, over a throwaway contiguous KV cache of the window's length.

Like embeddings (llm/embeddings.py), an eval forward never touches an engine's paged blocks: the
window runs as one sequence through engine/forward.py's chunked prefill, and its cache is dropped after.
"""

from __future__ import annotations

import torch

from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.forward import forward_tokens
from llamarun.models.llama import LlamaForCausalLM

CHUNK_TOKENS = 512  # positions per forward: bounds activation memory on long windows


def window_logits(model: LlamaForCausalLM, token_ids: torch.Tensor, dtype: torch.dtype,
                  device: torch.device | str) -> torch.Tensor:
    """Logits [tokens, vocab] in float32 for `token_ids` [tokens], the sequence starting at position 0."""
    cache = ContiguousKVCache(model.config, int(token_ids.shape[0]), dtype, device)
    return forward_tokens(model, cache, token_ids, all_logits=True, chunk_size=CHUNK_TOKENS)
