"""Paged attention with Triton kernels: the GPU backend over the same cache layout as paged_torch.

Per step the runner fills an AttentionMetadata (decodes first, then prefill chunks) and calls
`begin(meta)` once; every layer's `attend` then rotates q and k, stores its keys/values, runs the
split-K decode kernel over rows [0, num_decodes) and the flash prefill kernel over the rest. In an
all-decode step the decode kernel does the rotation and the store itself, and its merge writes the INT4
activation planes of the output projection: one kernel pair a layer instead of four launches. The
decode workspace is allocated once (at construction when given num_heads, else at the first decode)
for the largest decode batch; steps only take views of it, and `begin` picks the split count from
shapes, so a CUDA graph captured over a decode step replays with new lengths and no host work.
Prefill steps use the host's max_query_len for their grid and are run eagerly. Per layer the only
allocation is the output, which inside a graph capture comes from the graph's own pool.
"""

from __future__ import annotations

import os

import torch

from llamarun.attention.backend import AttentionBackend
from llamarun.attention.metadata import AttentionMetadata
from llamarun.attention.paged_torch import PagedKVCache
from llamarun.kernels.decode_attention import decode_attention, default_num_splits, sm_count
from llamarun.kernels.int4_gemv import empty_planes
from llamarun.kernels.kv_store import store_kv
from llamarun.kernels.prefill_attention import prefill_attention

# LLAMARUN_FUSE_DECODE=off: rotate in its own kernel and let the output projection make its own planes (A/B runs).
FUSE_DECODE = os.environ.get("LLAMARUN_FUSE_DECODE", "on").strip().lower() != "off"


class TritonPagedAttention(AttentionBackend):
    """Attention of a packed batch over a PagedKVCache on a CUDA device (or the Triton interpreter).

    `max_batch` bounds the decode rows of any step (the largest CUDA-graph batch); `num_heads` (query
    heads) sizes the decode workspace up front; `num_splits` fixes the decode split count (default:
    chosen per decode batch size to fill the card).
    """

    fuse = FUSE_DECODE  # class-wide switch for the all-decode fusions of `attend` (LLAMARUN_FUSE_DECODE=off)

    def __init__(self, cache: PagedKVCache, max_batch: int = 256, num_heads: int | None = None,
                 num_splits: int | None = None) -> None:
        self.cache = cache
        kv_heads, _, head_dim = cache.k.shape[1:]
        self.kv_heads, self.head_dim, self.scale = kv_heads, head_dim, head_dim**-0.5
        self.max_batch, self.fixed_splits = max_batch, num_splits
        self.device = cache.k.device
        self.meta: AttentionMetadata | None = None
        self._splits = 1
        # Decode workspace rows per query head for the hungriest batch size (split counts shrink as batches grow).
        self._rows_per_head = max(b * self._splits_for(b, cache.num_blocks) for b in range(1, max_batch + 1))
        self._heads = 0
        self._parts = self._lse = torch.empty(0, dtype=torch.float32, device=self.device)
        if num_heads is not None:
            self.allocate(num_heads)

    def _splits_for(self, batch: int, table_width: int) -> int:
        """Decode splits from shapes only; no sequence outgrows the cache, so its size caps the table's."""
        if self.fixed_splits is not None:
            return self.fixed_splits
        capacity = min(table_width, self.cache.num_blocks) * self.cache.block_size
        return default_num_splits(batch, self.kv_heads, capacity, sm_count(self.device))

    def allocate(self, num_heads: int) -> None:
        """Size the decode workspace for `num_heads` query heads; the first decode does it if nobody did.

        Pass num_heads to the constructor (or call this) before capturing CUDA graphs, so no capture allocates.
        """
        if self._heads == num_heads:
            return
        self._heads = num_heads
        rows = self._rows_per_head * num_heads
        self._parts = torch.empty(rows * self.head_dim, dtype=torch.float32, device=self.device)
        self._lse = torch.empty(rows, dtype=torch.float32, device=self.device)

    def begin(self, meta: AttentionMetadata) -> None:
        """Take this step's metadata; called once per step, before the forward pass."""
        if meta.num_decodes > self.max_batch:
            raise ValueError(f"{meta.num_decodes} decode rows exceed this backend's max_batch {self.max_batch}")
        self.meta = meta
        self._splits = self._splits_for(max(meta.num_decodes, 1), meta.block_tables.shape[1])

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._run(layer, q, k, v, torch.empty_like(q))

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, feeds: torch.nn.Module | None = None) -> torch.Tensor:
        """An all-decode step folds two launches a layer into the decode kernels: the split kernel rotates q and
        the new keys as it loads them, and the merge kernel writes the INT4 planes `feeds` would make of the
        output (when it takes planes whose groups lie within a head). Other steps rotate first, as the base does."""
        meta = self.meta
        tokens, heads, head_dim = q.shape
        if meta is None or not self._all_decode(meta, q) or cos.shape != (tokens, head_dim) or cos.stride(1) != 1 \
                or sin.stride(1) != 1 or not self.fuse:
            return super().attend(layer, q, k, v, cos, sin, feeds)
        out = torch.empty(tokens, heads * head_dim, dtype=q.dtype, device=q.device)  # what o_proj reads
        planes = None
        group = feeds.planes_group(out) if hasattr(feeds, "planes_group") and self._splits > 1 else None
        if group is not None and group >= 32 and head_dim % group == 0:
            planes = (empty_planes(tokens, heads * head_dim, group, q.device), group)
        self._run(layer, q, k, v, out.view(tokens, heads, head_dim), rotary=(cos, sin), planes=planes)
        if planes is not None:
            feeds.give_planes(out, planes[0])
        return out

    @staticmethod
    def _all_decode(meta: AttentionMetadata, q: torch.Tensor) -> bool:
        """A step of decode rows only: the decode kernel itself may store the step's keys and values."""
        return meta.num_decodes > 0 and meta.num_prefills == 0 and q.shape[0] == meta.num_decodes

    def _run(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             rotary: tuple[torch.Tensor, torch.Tensor] | None = None, planes: tuple | None = None) -> torch.Tensor:
        meta = self.meta
        if meta is None:
            raise RuntimeError("TritonPagedAttention.forward before begin(meta)")
        kc, vc = self.cache.k[layer], self.cache.v[layer]  # [kv_heads, slots, head_dim]
        nd = meta.num_decodes
        # An all-decode step's keys and values are written by the decode kernel itself (one launch less).
        fused_store = self._all_decode(meta, q)
        if not fused_store:
            store_kv(k, v, kc, vc, meta.slot_mapping)
        block_size = self.cache.block_size
        if nd:
            decode_attention(q[:nd], kc, vc, meta.block_tables[:nd], meta.seq_lens[:nd], self.scale, block_size,
                             out=out[:nd], num_splits=self._splits, workspace=self._workspace(q.shape[1], nd),
                             new=(k, v, meta.slot_mapping) if fused_store else None, rotary=rotary, planes=planes)
        if meta.num_prefills:
            prefill_attention(q, kc, vc, meta.block_tables, meta.seq_lens, meta.query_start, self.scale, block_size,
                              meta.max_query_len, first_seq=nd, out=out)
        return out

    def _workspace(self, heads: int, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Views of the persistent workspace for this step's decode batch (None when one split writes directly)."""
        if self._splits == 1:
            return None
        self.allocate(heads)
        n = batch * heads * self._splits
        if n > self._lse.numel():
            raise ValueError(f"decode workspace holds {self._lse.numel()} rows, this step needs {n}")
        parts = self._parts[: n * self.head_dim].view(batch, heads, self._splits, self.head_dim)
        return parts, self._lse[:n].view(batch, heads, self._splits)
