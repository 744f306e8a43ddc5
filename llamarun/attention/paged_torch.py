"""Paged attention in plain torch: the reference backend (CPU path and test oracle for GPU kernels).

The KV cache of every layer is one slab of token slots, `[num_blocks * block_size, kv_heads, head_dim]`;
a sequence's block table says which blocks hold its tokens. Each step the runner packs all scheduled
tokens side by side; this backend writes their keys/values into their slots, then attends each
sequence over its own slots. Decoding sequences (one query each) are batched into one padded
matmul; prefill chunks run SDPA one sequence at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llamarun.attention.backend import AttentionBackend
from llamarun.config import ModelConfig


class PagedKVCache:
    """K and V slabs for all layers: [layers, num_blocks * block_size, kv_heads, head_dim]."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        shape = (config.num_layers, num_blocks * block_size, config.num_kv_heads, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks, self.block_size = num_blocks, block_size

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class SeqSlice:
    """One sequence in the packed batch: its queries are rows [q_start, q_start + q_len)."""

    q_start: int
    q_len: int
    context_len: int  # tokens of the sequence attended over, this step's included
    slots: torch.Tensor  # [context_len] cache slots of its tokens, in order


class PagedAttention(AttentionBackend):
    """Attention of a packed batch of sequences over the paged cache (metadata built once per step)."""

    def __init__(self, cache: PagedKVCache, slot_mapping: torch.Tensor, seqs: list[SeqSlice]) -> None:
        self.cache = cache
        self.slot_mapping = slot_mapping  # [tokens] where each new token's K/V goes
        self.prefills = [s for s in seqs if s.q_len > 1]
        decodes = [s for s in seqs if s.q_len == 1]
        self.decode_rows = None
        if decodes:
            device = slot_mapping.device
            longest = max(s.context_len for s in decodes)
            slots = torch.zeros(len(decodes), longest, dtype=torch.long, device=device)  # [B, L]
            valid = torch.zeros(len(decodes), longest, dtype=torch.bool, device=device)
            for row, s in enumerate(decodes):
                slots[row, :s.context_len] = s.slots
                valid[row, :s.context_len] = True
            self.decode_rows = torch.tensor([s.q_start for s in decodes], device=device)  # [B]
            self.decode_slots, self.decode_valid = slots, valid

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kc, vc = self.cache.k[layer], self.cache.v[layer]  # [slots, kv_heads, head_dim]
        kc.index_copy_(0, self.slot_mapping, k)
        vc.index_copy_(0, self.slot_mapping, v)
        out = torch.empty_like(q)  # [tokens, heads, head_dim]
        for s in self.prefills:
            out[s.q_start:s.q_start + s.q_len] = _prefill(q[s.q_start:s.q_start + s.q_len], kc[s.slots], vc[s.slots])
        if self.decode_rows is not None:
            out[self.decode_rows] = _decode(q[self.decode_rows], kc[self.decode_slots], vc[self.decode_slots],
                                            self.decode_valid)
        return out


def _prefill(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """q [n, heads, d] are the last n of the context's tokens; keys/values [ctx, kv_heads, d]."""
    n, ctx = q.shape[0], keys.shape[0]
    query = q.transpose(0, 1).unsqueeze(0)  # [1, heads, n, d]
    key = keys.transpose(0, 1).unsqueeze(0)  # [1, kv_heads, ctx, d]
    value = values.transpose(0, 1).unsqueeze(0)
    if n == ctx:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
    else:
        rows = torch.arange(ctx - n, ctx, device=q.device)[:, None]
        mask = torch.arange(ctx, device=q.device)[None, :] <= rows  # [n, ctx]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)  # [n, heads, d]


def _decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One query per sequence. q [B, heads, d], keys/values [B, L, kv_heads, d], valid [B, L] -> [B, heads, d].

    Two batched matmuls: on CPUs, SDPA's flash kernel costs milliseconds for a single query.
    """
    b, heads, d = q.shape
    kv_heads = keys.shape[2]
    qg = q.view(b, kv_heads, heads // kv_heads, d)  # [B, kv_heads, group, d]
    kt = keys.permute(0, 2, 3, 1)  # [B, kv_heads, d, L]
    scores = torch.matmul(qg, kt).float() * d**-0.5  # [B, kv_heads, group, L]
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(probs, values.permute(0, 2, 1, 3))  # [B, kv_heads, group, d]
    return out.reshape(b, heads, d)
