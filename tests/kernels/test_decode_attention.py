"""Split-K paged decode attention against its torch reference: GQA groups, ragged lengths, padded rows."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.decode_attention import (
    MIN_SPLIT_TOKENS,
    decode_attention,
    decode_attention_reference,
    decode_workspace,
    default_num_splits,
)

# Lengths: a single token, ragged (not a multiple of the block), a padded row, several tiles, an exact tile.
LENGTHS = [1, 17, 0, 150, 64]


@pytest.mark.parametrize(("kv_heads", "group", "head_dim", "block_size"),
                         [(2, 1, 64, 16), (2, 4, 128, 16), (1, 8, 64, 8), (1, 3, 64, 32)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_matches_reference(paged_cache, assert_close, device, dtype, kv_heads, group, head_dim, block_size,
                                  num_splits):
    c = paged_cache(LENGTHS, kv_heads, head_dim, block_size, dtype, device, seed=group)
    q = torch.randn(len(LENGTHS), kv_heads * group, head_dim, device=device).to(dtype)
    scale = head_dim**-0.5
    out = decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, scale, block_size, num_splits=num_splits)
    expected = decode_attention_reference(q, c.k, c.v, c.block_tables, c.seq_lens, scale, block_size)
    assert_close(out, expected)
    assert torch.equal(out[2], torch.zeros_like(out[2]))  # seq_len 0: zeros, not NaN


def test_every_output_and_partial_is_written(paged_cache, assert_close, device, dtype):
    """NaN-poisoned output and workspace: more splits than tiles must still leave nothing unwritten."""
    lengths = [3, 0, 70]
    c = paged_cache(lengths, 2, 64, 16, dtype, device, seed=5)
    q = torch.randn(3, 4, 64, device=device).to(dtype)  # group 2
    splits = 6  # the 3-token row has 1 tile, so 5 of its splits are empty
    workspace = decode_workspace(3, 4, splits, 64, device)
    for t in (*workspace, out := torch.empty_like(q)):
        t.fill_(float("nan"))
    decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, out=out, num_splits=splits,
                     workspace=workspace)
    assert not workspace[0].isnan().any() and not workspace[1].isnan().any()
    assert_close(out, decode_attention_reference(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16))


def test_lengths_change_between_calls_with_fixed_launch(paged_cache, assert_close, device, dtype):
    """What a CUDA-graph replay does: same buffers, split count and grid; only seq_lens' contents move."""
    c = paged_cache([90, 40], 1, 64, 16, dtype, device, seed=7)
    q = torch.randn(2, 4, 64, device=device).to(dtype)
    out = torch.empty_like(q)
    workspace = decode_workspace(2, 4, 4, 64, device)
    for lengths in ([90, 40], [5, 33], [0, 1]):
        c.seq_lens.copy_(torch.tensor(lengths, dtype=torch.int32))
        decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, out=out, num_splits=4,
                         workspace=workspace)
        assert_close(out, decode_attention_reference(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16))


def test_strided_queries_from_a_merged_projection(paged_cache, assert_close, device, dtype):
    """q as the model hands it over: a view into the qkv output, rows strided past k and v."""
    c = paged_cache([20, 9], 2, 64, 16, dtype, device, seed=3)
    qkv = torch.randn(2, (8 + 2 * 2) * 64, device=device).to(dtype)
    q = qkv[:, : 8 * 64].view(2, 8, 64)
    out = decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=2)
    assert_close(out, decode_attention_reference(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16))


def test_default_splits_fill_the_card_from_shapes_only():
    sms = 132
    assert default_num_splits(1, 8, 131072, sms) * 8 >= 2 * sms  # one long sequence: split to fill the card
    assert default_num_splits(64, 8, 131072, sms) == 1  # a big batch fills it alone: no merge pass
    assert default_num_splits(1, 8, 256, sms) == 256 // MIN_SPLIT_TOKENS  # never shorter than that of capacity
    assert default_num_splits(1, 1, 10**7, sms) == 64  # capped


def test_rejects_layouts_the_kernel_cannot_address(device):
    k = torch.zeros(2, 64, 48, device=device)
    q = torch.zeros(1, 4, 48, device=device)
    tables = torch.zeros(1, 4, dtype=torch.int32, device=device)
    lens = torch.ones(1, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="power of two"):
        decode_attention(q, k, k, tables, lens, 0.1, 16)
    k = torch.zeros(2, 64, 64, device=device)
    with pytest.raises(ValueError, match="do not split evenly"):
        decode_attention(torch.zeros(1, 3, 64, device=device), k, k, tables, lens, 0.1, 16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("num_splits", [None, 1, 16])
def test_decode_llama_8b_shapes_bf16(paged_cache, num_splits):
    """Llama 3.1 8B attention (32 q heads, 8 kv heads, d 128), long ragged contexts."""
    lengths = [1, 4097, 0, 333, 16384, 1024]
    c = paged_cache(lengths, 8, 128, 16, torch.bfloat16, "cuda", seed=11)
    q = torch.randn(len(lengths), 32, 128, device="cuda", dtype=torch.bfloat16)
    out = decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 128**-0.5, 16, num_splits=num_splits)
    expected = decode_attention_reference(q, c.k, c.v, c.block_tables, c.seq_lens, 128**-0.5, 16)
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_the_step_s_keys_and_values_are_stored_by_the_kernel(paged_cache, assert_close, device, dtype, num_splits):
    """`new`: each row's last position gets this step's key and value (a padded row, slot -1, writes nothing),
    exactly what store_kv writes, and the attention already sees them."""
    from llamarun.kernels.kv_store import store_kv

    lengths = [1, 17, 0, 150, 64]
    c = paged_cache(lengths, 2, 64, 16, dtype, device, seed=11)
    kv_heads, head_dim, block = 2, 64, 16
    slots = torch.tensor([int(c.block_tables[b, (n - 1) // block]) * block + (n - 1) % block if n else -1
                          for b, n in enumerate(lengths)], device=device)
    qkv = torch.randn(len(lengths), (4 + 2 * kv_heads) * head_dim, device=device).to(dtype)  # a merged projection
    q = qkv[:, :4 * head_dim].view(-1, 4, head_dim)
    k = qkv[:, 4 * head_dim:(4 + kv_heads) * head_dim].view(-1, kv_heads, head_dim)  # strided views
    v = qkv[:, (4 + kv_heads) * head_dim:].view(-1, kv_heads, head_dim)
    k_ref, v_ref = c.k.clone(), c.v.clone()
    store_kv(k, v, k_ref, v_ref, slots)
    out = decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, block, num_splits=num_splits,
                           new=(k, v, slots))
    assert torch.equal(c.k, k_ref) and torch.equal(c.v, v_ref)
    assert_close(out, decode_attention_reference(q, k_ref, v_ref, c.block_tables, c.seq_lens, 0.125, block))


def test_new_keys_of_the_wrong_shape_are_refused(paged_cache, device, dtype):
    c = paged_cache([5], 2, 64, 16, dtype, device, seed=1)
    q = torch.randn(1, 4, 64, device=device).to(dtype)
    k = torch.randn(1, 3, 64, device=device).to(dtype)  # three KV heads for a two-head cache
    with pytest.raises(ValueError, match="new keys"):
        decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, new=(k, k, torch.zeros(1, device=device)))


def _decode_step(paged_cache, device, dtype, lengths, kv_heads, group, head_dim, seed):
    """A cache with `lengths`, each row's last slot, and a merged q/k/v projection's strided views."""
    c = paged_cache(lengths, kv_heads, head_dim, 16, dtype, device, seed=seed)
    slots = torch.tensor([int(c.block_tables[b, (n - 1) // 16]) * 16 + (n - 1) % 16 if n else -1
                          for b, n in enumerate(lengths)], device=device)
    heads = kv_heads * group
    qkv = torch.randn(len(lengths), (heads + 2 * kv_heads) * head_dim, device=device).to(dtype)
    q = qkv[:, :heads * head_dim].view(-1, heads, head_dim)
    k = qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].view(-1, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim:].view(-1, kv_heads, head_dim)
    return c, slots, q, k, v


@pytest.mark.parametrize("num_splits", [1, 3])
def test_rotary_folded_into_the_kernel_matches_rotating_first(paged_cache, assert_close, device, dtype, num_splits):
    """`rotary`: q and the new keys rotated inside the kernel give the cache and output of the rotary kernel then
    the plain decode kernel; q and k in memory stay unrotated."""
    from llamarun.kernels.rotary import apply_rotary_

    lengths = [1, 17, 0, 150]
    c, slots, q, k, v = _decode_step(paged_cache, device, dtype, lengths, 2, 4, 64, seed=12)
    angles = torch.rand(len(lengths), 32, device=device) * 6
    cos = torch.cat([angles.cos()] * 2, dim=1).to(dtype)  # [B, head_dim], as RotaryEmbedding makes them
    sin = torch.cat([angles.sin()] * 2, dim=1).to(dtype)
    q0, k0 = q.clone(), k.clone()
    ref_k, ref_v, q_rot, k_rot = c.k.clone(), c.v.clone(), q.clone(), k.clone()
    apply_rotary_(q_rot, k_rot, cos, sin)
    expected = decode_attention(q_rot, ref_k, ref_v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=num_splits,
                                new=(k_rot, v, slots))
    out = decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=num_splits,
                           new=(k, v, slots), rotary=(cos, sin))
    assert torch.equal(q, q0) and torch.equal(k, k0)
    assert not torch.equal(q_rot, q0)  # the rotation did something
    assert_close(c.k, ref_k)
    assert torch.equal(c.v, ref_v)
    assert_close(out, expected)
    if not q.is_cuda:  # the interpreter has no fused multiply-adds: the same arithmetic gives the same bits
        assert torch.equal(c.k, ref_k) and torch.equal(out, expected)


@pytest.mark.parametrize(("head_dim", "planes_group"), [(64, 64), (128, 64), (64, 32)])
def test_merge_writes_the_output_projection_s_int4_planes(paged_cache, device, dtype, head_dim, planes_group):
    """`planes`: the merge kernel writes exactly the planes the INT4 GEMV's own planes kernel makes of the output."""
    from llamarun.kernels.int4_gemv import activation_planes, empty_planes

    lengths = [1, 17, 0, 150]
    c, _, q, _, _ = _decode_step(paged_cache, device, dtype, lengths, 2, 2, head_dim, seed=13)
    batch, heads = len(lengths), q.shape[1]
    out = torch.empty(batch, heads * head_dim, dtype=dtype, device=device)
    planes = empty_planes(batch, heads * head_dim, planes_group, torch.device(device))
    decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=3,
                     out=out.view(batch, heads, head_dim), planes=(planes, planes_group))
    plain = decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=3)
    assert torch.equal(out.view_as(plain), plain)  # writing the planes leaves the output as it was
    for got, want in zip(planes, activation_planes(out, planes_group), strict=True):
        assert torch.equal(got, want)


def test_fusions_that_cannot_run_are_refused(paged_cache, device, dtype):
    from llamarun.kernels.int4_gemv import empty_planes

    c = paged_cache([5, 9], 2, 64, 16, dtype, device, seed=1)
    q = torch.randn(2, 4, 64, device=device).to(dtype)
    out = torch.empty(2, 256, dtype=dtype, device=device)
    planes = empty_planes(2, 256, 64, torch.device(device))
    cos = torch.ones(2, 64, device=device, dtype=dtype)
    with pytest.raises(ValueError, match="rotary needs the step's keys"):
        decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, rotary=(cos, cos))
    with pytest.raises(ValueError, match="one split writes no planes"):
        decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=1,
                         out=out.view(2, 4, 64), planes=(planes, 64))
    with pytest.raises(ValueError, match="dividing head_dim"):
        decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=2,
                         out=out.view(2, 4, 64), planes=(empty_planes(2, 256, 128, torch.device(device)), 128))
    with pytest.raises(ValueError, match="do not fit"):
        decode_attention(q, c.k, c.v, c.block_tables, c.seq_lens, 0.125, 16, num_splits=2,
                         out=out.view(2, 4, 64), planes=(empty_planes(1, 256, 64, torch.device(device)), 64))
