"""One forward pass of one sequence over a contiguous KV cache (prefill chunks or a decode step)."""

from __future__ import annotations

import torch

from llamarun.attention.backend import use_backend
from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.models.llama import LlamaForCausalLM


@torch.inference_mode()
def forward_tokens(model: LlamaForCausalLM, cache: ContiguousKVCache, token_ids: list[int] | torch.Tensor,
                   all_logits: bool = False, chunk_size: int = 512) -> torch.Tensor:
    """Append `token_ids` to the sequence in `cache`; logits [vocab] of the last token, or [tokens, vocab].

    Long prompts go through in chunks so activation memory stays bounded by `chunk_size`.
    """
    device = cache.k.device
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=device)  # [tokens]
    outputs = []
    for start in range(0, ids.shape[0], chunk_size):
        chunk = ids[start:start + chunk_size]
        n = chunk.shape[0]
        positions = torch.arange(cache.length, cache.length + n, device=device)  # [n]
        last = chunk.shape[0] - 1
        wanted = None if all_logits else torch.tensor([last], device=device)
        with use_backend(cache.step(n)):
            logits = model(chunk, positions, wanted)  # [n or 1, vocab]
        if all_logits:
            outputs.append(logits)
        else:
            outputs = [logits]
    return torch.cat(outputs) if all_logits else outputs[0][0]
