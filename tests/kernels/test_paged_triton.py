"""TritonPagedAttention against the torch PagedAttention on the same step: mixed, decode-only, prefill-only."""

from __future__ import annotations

import pytest
import torch

from llamarun.attention.metadata import AttentionMetadata
from llamarun.attention.paged_torch import PagedAttention, PagedKVCache
from llamarun.attention.paged_triton import TritonPagedAttention
from llamarun.config import ModelConfig

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 8, 2, 64, 16


def _cache(dtype: torch.dtype, device: str) -> PagedKVCache:
    config = ModelConfig(vocab_size=8, hidden_size=HEADS * HEAD_DIM, intermediate_size=8, num_layers=2,
                         num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    cache = PagedKVCache(config, num_blocks=24, block_size=BLOCK, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(0)
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))  # cached prefixes hold real-looking values
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    return cache


def _metadata(rows: list[tuple[list[int], int, int, list[int]]], num_decodes: int, device: str) -> AttentionMetadata:
    """rows: (new tokens' slots, new tokens, seq_len, blocks) per sequence, packed in order."""
    starts = [0]
    for _, new, _, _ in rows:
        starts.append(starts[-1] + max(new, 1))
    width = max(len(blocks) for *_, blocks in rows) + 1
    table = torch.zeros(len(rows), width, dtype=torch.int32)
    for b, (*_, blocks) in enumerate(rows):
        table[b, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
    return AttentionMetadata(
        slot_mapping=torch.tensor([s for slots, *_ in rows for s in slots], device=device),
        query_start=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor([n for _, _, n, _ in rows], dtype=torch.int32, device=device),
        block_tables=table.to(device), num_decodes=num_decodes,
        max_query_len=max(new for _, new, _, _ in rows), max_seq_len=max(n for _, _, n, _ in rows))


def _step(specs: list[tuple[int, int]], num_decodes: int, device: str) -> tuple[AttentionMetadata, AttentionMetadata]:
    """Metadata for sequences (cached tokens, new tokens); (0, 0) is a padded decode row (seq_len 0, slot -1).

    Also the same step without its padded rows, for the torch reference (whose runner never pads).
    """
    order = torch.randperm(24, generator=torch.Generator().manual_seed(1)).tolist()
    rows = []
    for prefix, new in specs:
        end = prefix + new
        blocks = [order.pop() for _ in range(-(-end // BLOCK))]
        pos = torch.arange(end)
        token_slots = torch.tensor(blocks, dtype=torch.long)[pos // BLOCK] * BLOCK + pos % BLOCK  # [end]
        rows.append(([-1] if new == 0 else token_slots[prefix:].tolist(), new, end, blocks))
    real = [r for r in rows if r[1] > 0]
    real_decodes = sum(1 for r in rows[:num_decodes] if r[1] > 0)
    return _metadata(rows, num_decodes, device), _metadata(real, real_decodes, device)


@pytest.mark.parametrize(("specs", "num_decodes"), [
    ([(0, 1), (16, 1), (40, 1), (0, 20), (33, 7), (5, 1)], 3),  # mixed, a one-token chunk among the prefills
    ([(50, 1), (0, 1), (17, 1), (0, 0)], 4),  # decodes only, the last a padded graph row
    ([(0, 37), (20, 12)], 0),  # prefills only
], ids=["mixed", "decode", "prefill"])
@pytest.mark.parametrize("num_splits", [None, 1])
def test_backend_matches_torch_paged_attention(assert_close, device, dtype, specs, num_decodes, num_splits):
    torch_cache, triton_cache = _cache(dtype, device), _cache(dtype, device)
    meta, unpadded = _step(specs, num_decodes, device)
    real = meta.slot_mapping >= 0  # the torch backend has no padded rows
    reference = PagedAttention(torch_cache, unpadded)
    backend = TritonPagedAttention(triton_cache, max_batch=8, num_splits=num_splits)
    backend.begin(meta)
    tokens = meta.slot_mapping.shape[0]
    for layer in range(2):  # the second layer must address its own slab
        q = torch.randn(tokens, HEADS, HEAD_DIM, device=device).to(dtype)
        k = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device).to(dtype)
        v = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device).to(dtype)
        out = backend.forward(layer, q, k, v)
        expected = reference.forward(layer, q[real], k[real], v[real])
        assert_close(out[real], expected)
        assert not out[~real].any()  # padded rows: zeros
    assert torch.equal(triton_cache.k, torch_cache.k) and torch.equal(triton_cache.v, torch_cache.v)


def test_workspace_is_sized_once_and_reused(device, dtype):
    cache = _cache(dtype, device)
    backend = TritonPagedAttention(cache, max_batch=4, num_heads=HEADS, num_splits=3)
    parts = backend._parts
    assert parts.numel() == 4 * HEADS * 3 * HEAD_DIM
    for specs in ([(10, 1), (3, 1)], [(1, 1), (2, 1), (70, 1), (0, 0)]):
        meta, _ = _step(specs, len(specs), device)
        backend.begin(meta)
        q = torch.randn(len(specs), HEADS, HEAD_DIM, device=device).to(dtype)
        kv = torch.randn(len(specs), KV_HEADS, HEAD_DIM, device=device).to(dtype)
        backend.forward(0, q, kv, kv)
    assert backend._parts is parts


def test_too_many_decodes_and_forward_before_begin_are_errors(device, dtype):
    backend = TritonPagedAttention(_cache(dtype, device), max_batch=2)
    q = torch.zeros(1, HEADS, HEAD_DIM, device=device, dtype=dtype)
    kv = torch.zeros(1, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    with pytest.raises(RuntimeError, match="before begin"):
        backend.forward(0, q, kv, kv)
    meta, _ = _step([(1, 1), (2, 1), (3, 1)], 3, device)
    with pytest.raises(ValueError, match="max_batch"):
        backend.begin(meta)


class _PlanesFeeds(torch.nn.Module):
    """Stands in for an INT4 output projection: asks for planes in groups of `group` and keeps what it is given."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group, self.given = group, None

    def planes_group(self, x: torch.Tensor) -> int:
        return self.group

    def give_planes(self, x: torch.Tensor, planes: tuple) -> None:
        self.given = (x, planes)


@pytest.mark.parametrize(("specs", "num_decodes"), [
    ([(50, 1), (0, 1), (17, 1), (0, 0)], 4),  # decodes only: rotation and planes fold into the decode kernels
    ([(0, 1), (16, 1), (0, 20)], 2),  # mixed: rotate first, as the base backend does
], ids=["decode", "mixed"])
@pytest.mark.parametrize("num_splits", [3, 1])
def test_attend_folds_rotation_and_planes_into_a_decode_step(assert_close, device, dtype, specs, num_decodes,
                                                             num_splits):
    """`attend` gives the output and cache of rotating first then `forward`; on an all-decode step with a merge,
    it hands the output projection the planes of exactly the tensor it returns."""
    from llamarun.attention.backend import AttentionBackend
    from llamarun.kernels.int4_gemv import activation_planes

    fused_cache, plain_cache = _cache(dtype, device), _cache(dtype, device)
    meta, _ = _step(specs, num_decodes, device)
    fused = TritonPagedAttention(fused_cache, max_batch=8, num_splits=num_splits)
    plain = TritonPagedAttention(plain_cache, max_batch=8, num_splits=num_splits)
    fused.begin(meta)
    plain.begin(meta)
    tokens = meta.slot_mapping.shape[0]
    angles = torch.rand(tokens, HEAD_DIM // 2, device=device) * 6
    cos = torch.cat([angles.cos()] * 2, dim=1).to(dtype)
    sin = torch.cat([angles.sin()] * 2, dim=1).to(dtype)
    for layer in range(2):
        q = torch.randn(tokens, HEADS, HEAD_DIM, device=device).to(dtype)
        k = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device).to(dtype)
        v = torch.randn(tokens, KV_HEADS, HEAD_DIM, device=device).to(dtype)
        feeds = _PlanesFeeds(32)
        out = fused.attend(layer, q.clone(), k.clone(), v, cos, sin, feeds=feeds)
        expected = AttentionBackend.attend(plain, layer, q.clone(), k.clone(), v, cos, sin)
        assert out.shape == (tokens, HEADS * HEAD_DIM)
        assert_close(out, expected)
        merged = num_decodes == tokens and fused._splits > 1
        assert (feeds.given is not None) == merged
        if merged:
            assert feeds.given[0] is out
            for got, want in zip(feeds.given[1], activation_planes(out, 32), strict=True):
                assert torch.equal(got, want)
    assert_close(fused_cache.k, plain_cache.k)
    assert torch.equal(fused_cache.v, plain_cache.v)
