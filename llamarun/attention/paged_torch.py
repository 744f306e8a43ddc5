"""Paged attention in plain torch: the reference backend (CPU path and test oracle for GPU kernels).

The KV cache of every layer is one slab of token slots per KV head, `[kv_heads, num_blocks * block_size,
head_dim]`; a sequence's block table says which blocks hold its tokens. Each step the runner packs all
scheduled tokens side by side; this backend writes their keys/values into their slots, then attends
each sequence over its own. Decoding sequences (one query each) are batched: their blocks are
gathered whole (one index per block, not per token) into a padded batch for two matmuls. Prefill
chunks run SDPA one sequence at a time. Heads lead the layout so gathers land in the shape the
matmuls and SDPA take, without transposing copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llamarun.attention.backend import AttentionBackend
from llamarun.config import ModelConfig


class PagedKVCache:
    """K and V slabs for all layers: [layers, kv_heads, num_blocks * block_size, head_dim]."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        shape = (config.num_layers, config.num_kv_heads, num_blocks * block_size, config.head_dim)
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
    slots: torch.Tensor | None  # [context_len] cache slots of its tokens, in order (prefill chunks only)
    blocks: torch.Tensor  # [ceil(context_len / block_size)] its block table


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
            most = max(s.blocks.numel() for s in decodes)
            tables = torch.zeros(len(decodes), most, dtype=torch.long, device=device)  # [B, blocks]
            for row, s in enumerate(decodes):
                tables[row, :s.blocks.numel()] = s.blocks
            lengths = torch.tensor([s.context_len for s in decodes], device=device)  # [B]
            positions = torch.arange(most * cache.block_size, device=device)  # [L]
            self.decode_valid = positions[None, :] < lengths[:, None]  # [B, L]
            self.decode_rows = torch.tensor([s.q_start for s in decodes], device=device)  # [B]
            self.decode_tables = tables

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kc, vc = self.cache.k[layer], self.cache.v[layer]  # [kv_heads, slots, head_dim]
        kc.index_copy_(1, self.slot_mapping, k.transpose(0, 1))
        vc.index_copy_(1, self.slot_mapping, v.transpose(0, 1))
        out = torch.empty_like(q)  # [tokens, heads, head_dim]
        for s in self.prefills:
            rows = slice(s.q_start, s.q_start + s.q_len)
            out[rows] = _prefill(q[rows], kc[:, s.slots], vc[:, s.slots])
        if self.decode_rows is not None:
            kv_heads, _, d = kc.shape
            by_block = (kv_heads, self.cache.num_blocks, self.cache.block_size, d)
            b = self.decode_tables.shape[0]
            keys = kc.view(by_block)[:, self.decode_tables].view(kv_heads, b, -1, d)  # [kv_heads, B, L, d]
            values = vc.view(by_block)[:, self.decode_tables].view(kv_heads, b, -1, d)
            out[self.decode_rows] = _decode(q[self.decode_rows], keys, values, self.decode_valid)
        return out


def _prefill(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """q [n, heads, d] are the last n of the context's tokens; keys/values [kv_heads, ctx, d]."""
    n, ctx = q.shape[0], keys.shape[1]
    query = q.transpose(0, 1).unsqueeze(0)  # [1, heads, n, d]
    key = keys.unsqueeze(0)  # [1, kv_heads, ctx, d]
    value = values.unsqueeze(0)
    if n == ctx:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, enable_gqa=True)
    else:
        rows = torch.arange(ctx - n, ctx, device=q.device)[:, None]
        mask = torch.arange(ctx, device=q.device)[None, :] <= rows  # [n, ctx]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)  # [n, heads, d]


def _decode(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One query per sequence. q [B, heads, d], keys/values [kv_heads, B, L, d], valid [B, L] -> [B, heads, d].

    Two batched matmuls: on CPUs, SDPA's flash kernel costs milliseconds for a single query.
    """
    b, heads, d = q.shape
    kv_heads = keys.shape[0]
    qg = q.view(b, kv_heads, heads // kv_heads, d).transpose(0, 1)  # [kv_heads, B, group, d]
    scores = torch.matmul(qg, keys.transpose(2, 3)).float() * d**-0.5  # [kv_heads, B, group, L]
    scores.masked_fill_(~valid[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.matmul(probs, values)  # [kv_heads, B, group, d]
    return out.transpose(0, 1).reshape(b, heads, d)
