"""Paged attention in plain torch: the reference backend (CPU path and test oracle for GPU kernels).

The KV cache of every layer is one slab of token slots per KV head, `[kv_heads, num_blocks * block_size,
head_dim]`; a sequence's block table says which blocks hold its tokens. Each step the runner packs all
scheduled tokens side by side, decodes first (the `AttentionMetadata` layout); this backend writes their
keys/values into their slots, then attends each sequence over its own. Decodes (one query each) are
batched: their blocks are gathered whole (one index per block, not per token) into a padded batch for
two matmuls. Prefill chunks run SDPA one sequence at a time, or on float32 CPU caches, up to
`NATIVE_PREFILL_MAX_CONTEXT` tokens of context, a native kernel that reads the context in place. Heads lead
the layout so gathers land in the shape the matmuls and SDPA take, without transposing copies.
"""

from __future__ import annotations

import math
import mmap

import torch
import torch.nn.functional as F

from llamarun.attention.backend import AttentionBackend
from llamarun.attention.metadata import AttentionMetadata
from llamarun.config import ModelConfig

# Prefill chunks whose context is at most this many tokens run the native kernel on float32 CPU caches: on the
# default model's shapes it took 0.6-0.8x PyTorch's flash SDPA's time (with the gather) at 64-191 tokens, as
# long at 512, and longer for a 109-token chunk after 191 cached tokens on one core, where SDPA's tiling wins.
NATIVE_PREFILL_MAX_CONTEXT = 256


class PagedKVCache:
    """K and V slabs for all layers: [layers, kv_heads, num_blocks * block_size, head_dim]."""

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        shape = (config.num_layers, config.num_kv_heads, num_blocks * block_size, config.head_dim)
        self.k = zeroed(shape, dtype, device)
        self.v = zeroed(shape, dtype, device)
        self.num_blocks, self.block_size = num_blocks, block_size

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A zero tensor; on CPUs backed by anonymous mapped pages, which read as zeros and cost nothing until written.

    The cache is sized for whole contexts, and zeroing it up front was a fifth of the default model's load (0.4 s
    for 377 MB). It must read as zeros, not garbage: the torch decode path gathers whole blocks, and a masked
    slot's probability 0 times a NaN left in memory would still be NaN.
    """
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    if count == 0:
        return torch.zeros(shape, dtype=dtype)
    pages = mmap.mmap(-1, count * dtype.itemsize)  # the tensor keeps the mapping alive through its buffer
    return torch.frombuffer(pages, dtype=dtype, count=count).view(shape)


class PagedAttention(AttentionBackend):
    """Attention of a packed batch of sequences over the paged cache, laid out by `AttentionMetadata`.

    The per-sequence gathers are built once per step here, not per layer: the metadata's small
    host-side facts (lengths, query offsets) are read back once, which costs nothing on a CPU. This
    reference backend takes no padded rows (slot -1): the torch runner never pads its batches.
    """

    def __init__(self, cache: PagedKVCache, metadata: AttentionMetadata) -> None:
        self.cache = cache
        self.slot_mapping = metadata.slot_mapping  # [tokens] where each new token's K/V goes
        bs = cache.block_size
        device = metadata.slot_mapping.device
        seq_lens = metadata.seq_lens.tolist()
        query_start = metadata.query_start.tolist()
        nd = self.num_decodes = metadata.num_decodes
        # Prefill chunks gather their context by token slot: (first query row, last + 1, slots [context]).
        self.prefills: list[tuple[int, int, torch.Tensor]] = []
        # Short ones on float32 CPU caches read it in place instead (kernels/cpu/prefill_attention.c):
        # (first query row, last + 1, block table [blocks] int32, context length).
        self.native_prefills: list[tuple[int, int, torch.Tensor, int]] = []
        native_prefill = None
        if device.type == "cpu" and cache.k.dtype == torch.float32 and nd < metadata.num_seqs:
            from llamarun.kernels.cpu.build import load_prefill_attention

            native_prefill = self.native_prefill = load_prefill_attention()
        for b in range(nd, metadata.num_seqs):
            ctx = seq_lens[b]
            blocks = metadata.block_tables[b, : -(-ctx // bs)]  # [blocks holding tokens [0, ctx)]
            if native_prefill is not None and ctx <= NATIVE_PREFILL_MAX_CONTEXT:
                self.native_prefills.append((query_start[b], query_start[b + 1], blocks.int().contiguous(), ctx))
                continue
            pos = torch.arange(ctx, device=device)  # [ctx]
            self.prefills.append((query_start[b], query_start[b + 1], blocks.long()[pos // bs] * bs + pos % bs))
        self.native = None
        if nd:
            # Decodes (packed rows [0, nd)) gather whole blocks, as many as the longest decode needs.
            width = -(-max(seq_lens[:nd]) // bs)
            tables = metadata.block_tables[:nd, :width]  # [B, blocks]
            if device.type == "cpu" and cache.k.dtype == torch.float32:
                from llamarun.kernels.cpu.build import load_decode_attention

                # One native call per layer instead of the gathers, matmuls, mask and softmax (kernels/cpu).
                self.native = load_decode_attention()
            if self.native is not None:
                # An all-decode step lets the native call store the step's keys and values too.
                self.native_stores = (not self.prefills and not self.native_prefills
                                      and metadata.slot_mapping.dtype == torch.int64
                                      and metadata.slot_mapping.is_contiguous())
                self.native_tables = tables.int().contiguous()  # [B, blocks] int32
                self.native_lens = metadata.seq_lens[:nd].int().contiguous()  # [B] int32
            else:
                self.decode_tables = tables.long()  # [B, blocks]
                positions = torch.arange(width * bs, device=device)  # [L]
                self.decode_valid = positions[None, :] < metadata.seq_lens[:nd, None]  # [B, L]

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kc, vc = self.cache.k[layer], self.cache.v[layer]  # [kv_heads, slots, head_dim]
        b = self.num_decodes
        if self.native is not None and self.native_stores and k.stride()[1:] == v.stride()[1:] == (k.shape[2], 1):
            # The native call stores the keys and values, then attends (one call a layer).
            return self.native(q, kc, vc, self.native_tables, self.native_lens, self.cache.block_size,
                               new=(k, v, self.slot_mapping))
        kc.index_copy_(1, self.slot_mapping, k.transpose(0, 1))
        vc.index_copy_(1, self.slot_mapping, v.transpose(0, 1))
        out = torch.empty_like(q)  # [tokens, heads, head_dim]
        for first, last, slots in self.prefills:
            out[first:last] = _prefill(q[first:last], kc[:, slots], vc[:, slots])
        for first, last, table, ctx in self.native_prefills:
            out[first:last] = self.native_prefill(q[first:last], kc, vc, table, ctx, self.cache.block_size)
        if self.num_decodes and self.native is not None:
            out[:b] = self.native(q[:b], kc, vc, self.native_tables, self.native_lens, self.cache.block_size)
        elif self.num_decodes:
            kv_heads, _, d = kc.shape
            by_block = (kv_heads, self.cache.num_blocks, self.cache.block_size, d)
            keys = kc.view(by_block)[:, self.decode_tables].view(kv_heads, b, -1, d)  # [kv_heads, B, L, d]
            values = vc.view(by_block)[:, self.decode_tables].view(kv_heads, b, -1, d)
            out[:b] = _decode(q[:b], keys, values, self.decode_valid)
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
