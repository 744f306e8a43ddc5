"""Slot writes of this step's keys/values: one launch for K and V, padding skipped, strided inputs."""

from __future__ import annotations

import torch

from llamarun.kernels.kv_store import store_kv, store_kv_reference


def test_store_matches_index_copy_and_skips_padding(device, dtype):
    kv_heads, head_dim, slots = 3, 64, 80
    gen = torch.Generator().manual_seed(1)
    # k/v as views of a merged qkv output: rows strided past the query heads.
    qkv = torch.randn(6, (4 + 2 * kv_heads) * head_dim, generator=gen).to(dtype).to(device)
    k = qkv[:, 4 * head_dim: (4 + kv_heads) * head_dim].view(6, kv_heads, head_dim)
    v = qkv[:, (4 + kv_heads) * head_dim:].view(6, kv_heads, head_dim)
    slot_mapping = torch.tensor([17, -1, 0, 79, -1, 40], device=device)  # int64, -1 = padding
    k_cache = torch.randn(kv_heads, slots, head_dim, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(kv_heads, slots, head_dim, generator=gen).to(dtype).to(device)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv(k, v, k_cache, v_cache, slot_mapping)
    store_kv_reference(k, v, k_ref, v_ref, slot_mapping)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)  # a copy is exact, untouched slots too
    assert torch.equal(k_cache[:, 79], k[3].to(dtype)) and torch.equal(v_cache[:, 0], v[2])


def test_store_into_one_layer_of_a_stacked_cache(device, dtype):
    """PagedKVCache.k[layer] is a view into [layers, ...]; the other layer must stay as it was."""
    cache_k = torch.zeros(2, 2, 32, 64, device=device, dtype=dtype)
    cache_v = torch.zeros_like(cache_k)
    k = torch.randn(2, 2, 64, device=device).to(dtype)
    v = torch.randn(2, 2, 64, device=device).to(dtype)
    store_kv(k, v, cache_k[1], cache_v[1], torch.tensor([5, 31], dtype=torch.int32, device=device))
    assert torch.equal(cache_k[1][:, 5], k[0]) and torch.equal(cache_v[1][:, 31], v[1])
    assert not cache_k[0].any() and not cache_v[0].any()
    assert int(cache_k[1].ne(0).any(-1).sum()) == 4  # 2 tokens x 2 heads, nothing else
