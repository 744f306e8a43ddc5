"""A contiguous KV cache for one sequence, and the attention backend that reads it.

This serves the single-request generation loop. The batched engine replaces it with paged blocks;
the model does not change, because it only ever talks to an `AttentionBackend`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llamarun.attention.backend import AttentionBackend
from llamarun.config import ModelConfig


class ContiguousKVCache:
    """K and V for every layer of one sequence: [layers, kv_heads, max_tokens, head_dim]."""

    def __init__(self, config: ModelConfig, max_tokens: int, dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (config.num_layers, config.num_kv_heads, max_tokens, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_tokens = max_tokens
        self.length = 0  # tokens whose K/V are stored

    def step(self, num_tokens: int) -> SingleSequenceAttention:
        """The backend for a forward pass that appends `num_tokens` tokens after the cached ones."""
        if self.length + num_tokens > self.max_tokens:
            raise ValueError(f"KV cache holds {self.max_tokens} tokens; {self.length + num_tokens} requested")
        backend = SingleSequenceAttention(self, self.length, num_tokens)
        self.length += num_tokens
        return backend

    def truncate(self, length: int) -> None:
        """Forget everything after `length` tokens (e.g. to reuse a shared prompt prefix)."""
        self.length = min(self.length, length)


class SingleSequenceAttention(AttentionBackend):
    """Causal attention of tokens [start, start+n) over cached tokens [0, start+n)."""

    def __init__(self, cache: ContiguousKVCache, start: int, num_tokens: int) -> None:
        self.cache, self.start, self.end = cache, start, start + num_tokens
        self.mask = None
        if start > 0 and num_tokens > 1:
            # Chunked prefill: row i may see keys up to start + i.
            rows = torch.arange(start, self.end, device=cache.k.device)[:, None]
            cols = torch.arange(self.end, device=cache.k.device)[None, :]
            self.mask = cols <= rows  # [n, start+n]

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s, e = self.start, self.end
        self.cache.k[layer, :, s:e] = k.transpose(0, 1)  # [kv_heads, n, head_dim]
        self.cache.v[layer, :, s:e] = v.transpose(0, 1)
        if e - s == 1:
            return decode_attention(q, self.cache.k[layer, :, :e], self.cache.v[layer, :, :e])
        keys = self.cache.k[layer, :, :e].unsqueeze(0)  # [1, kv_heads, e, head_dim]
        values = self.cache.v[layer, :, :e].unsqueeze(0)
        query = q.transpose(0, 1).unsqueeze(0)  # [1, heads, n, head_dim]
        causal = s == 0 and e > 1
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=self.mask, is_causal=causal, enable_gqa=True
        )  # [1, heads, n, head_dim]
        return out.squeeze(0).transpose(0, 1)  # [n, heads, head_dim]


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One query token over cached keys/values with plain matmuls.

    q [1, heads, head_dim], keys/values [kv_heads, length, head_dim] -> [1, heads, head_dim].
    On CPU, SDPA's flash kernel costs milliseconds per call for a single query (it tiles for long
    queries); two small matmuls cost microseconds. Query heads are grouped under their KV head.
    """
    kv_heads, _, head_dim = keys.shape
    heads = q.shape[1]
    qg = q.view(kv_heads, heads // kv_heads, head_dim)  # [kv_heads, group, head_dim]
    scores = torch.matmul(qg, keys.transpose(1, 2)) * head_dim**-0.5  # [kv_heads, group, length]
    probs = torch.softmax(scores.float(), dim=-1).to(values.dtype)
    out = torch.matmul(probs, values)  # [kv_heads, group, head_dim]
    return out.reshape(1, heads, head_dim)
