"""The native CPU kernel (kernels/cpu: C, AVX2, compiled on first use) against the exact product, and its fallback."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.cpu import build
from llamarun.quant.int8 import Int8Linear
from llamarun.quant.layouts import Int8Weight, dequantize

native = build.load()
needs_native = pytest.mark.skipif(native is None, reason="no AVX2/FMA or no C compiler here")


@needs_native
@pytest.mark.parametrize("m, n, k", [(1, 1728, 576), (3, 37, 64), (8, 576, 1536)])  # n % 4 != 0 takes the tail rows
def test_gemv_w8a8_matches_the_exact_product_within_int8_activation_error(m, n, k):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(m, k, generator=gen)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    scale = torch.rand(n, generator=gen) * 0.01
    want = x @ (q.float() * scale[:, None]).t()
    got = native(x, q, scale)
    assert got.shape == (m, n) and got.dtype == torch.float32
    # Activations are rounded to int8 in blocks of 32 (at most half a step of 1/254 of each block's largest value).
    assert ((got - want).norm() / want.norm()).item() < 0.01


@needs_native
def test_int8_linear_takes_it_for_decode_rows_and_torch_for_prompts(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    w = Int8Weight(torch.randint(-127, 128, (64, 96), dtype=torch.int8, generator=gen), torch.rand(64, generator=gen))
    layer = Int8Linear(w)
    calls = []
    monkeypatch.setattr(build, "_loaded", {"gemv_w8a8": lambda *a: calls.append(a[0].shape) or native(*a)})
    exact = dequantize(w, torch.float32)
    for rows in (1, 8, 40):
        x = torch.randn(rows, 96, generator=gen)
        y = layer(x)
        assert ((y - x @ exact.t()).norm() / (x @ exact.t()).norm()).item() < 0.02
    assert calls == [(1, 96), (8, 96)]  # 40 rows (a prompt chunk) stayed on PyTorch's kernels


def test_off_and_unbuildable_mean_pytorchs_kernels(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv(build.ENV, "off")
    assert build.load() is None
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv(build.ENV, "auto")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path / "home"))
    if build.cpu_has_avx2():
        assert build.load() is None  # the failed build is logged, never raised


attention = build.load_decode_attention()


@pytest.mark.skipif(attention is None, reason="no AVX2/FMA or no C compiler here")
@pytest.mark.parametrize("heads, kv_heads, d", [(4, 4, 64), (8, 2, 128), (16, 2, 20), (4, 2, 32), (6, 3, 96)])
# GQA 1/4/8, a scalar tail; 32 and 96 take the 16-dims passes of the vector path
def test_decode_attention_equals_the_torch_path_over_random_block_tables(heads, kv_heads, d):
    from llamarun.attention.paged_torch import _decode

    gen = torch.Generator().manual_seed(d)
    block_size, blocks, lens = 16, 40, [1, 17, 100, 5]
    k_slab = torch.randn(kv_heads, blocks * block_size, d, generator=gen)
    v_slab = torch.randn(kv_heads, blocks * block_size, d, generator=gen)
    width = -(-max(lens) // block_size)
    tables = torch.stack([torch.randperm(blocks, generator=gen)[:width] for _ in lens])  # [B, width], scattered
    q = torch.randn(len(lens), heads, d, generator=gen)
    got = attention(q, k_slab, v_slab, tables.int().contiguous(), torch.tensor(lens, dtype=torch.int32), block_size)
    by_block = (kv_heads, blocks, block_size, d)
    keys = k_slab.view(by_block)[:, tables].view(kv_heads, len(lens), -1, d)
    values = v_slab.view(by_block)[:, tables].view(kv_heads, len(lens), -1, d)
    valid = torch.arange(width * block_size)[None, :] < torch.tensor(lens)[:, None]
    torch.testing.assert_close(got, _decode(q, keys, values, valid), rtol=1e-5, atol=1e-5)


small_ops = build.load_small_ops()


@pytest.mark.skipif(small_ops is None, reason="no AVX2/FMA or no C compiler here")
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm_equals_the_torch_formula(with_residual):
    from llamarun.layers.fused import rms_norm_torch

    gen = torch.Generator().manual_seed(3)
    x, residual = torch.randn(3, 576, generator=gen), torch.randn(3, 576, generator=gen)
    weight = torch.rand(576, generator=gen) + 0.5
    norm, total = small_ops[0](x, residual if with_residual else None, weight, 1e-5)
    want_total = x + residual if with_residual else x
    torch.testing.assert_close(total, want_total)
    torch.testing.assert_close(norm, rms_norm_torch(want_total, weight, 1e-5), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(small_ops is None, reason="no AVX2/FMA or no C compiler here")
def test_rotary_on_strided_q_and_k_views_equals_the_torch_formula():
    from llamarun.layers.rotary import apply_rotary

    gen = torch.Generator().manual_seed(4)
    qkv = torch.randn(2, (9 + 3 + 3) * 64, generator=gen)  # q, k, v side by side, as the merged projection gives
    q, k = qkv[:, :9 * 64].view(2, 9, 64), qkv[:, 9 * 64:12 * 64].view(2, 3, 64)
    angles = torch.rand(2, 32, generator=gen) * 6
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    for x in (q, k):
        torch.testing.assert_close(small_ops[1](x, cos, sin), apply_rotary(x, cos, sin), rtol=1e-6, atol=1e-6)


def test_the_model_layers_take_the_native_ops_for_float32_rows(monkeypatch):
    from llamarun.layers import fused

    calls = []
    monkeypatch.setattr(build, "_loaded", {"small_ops": (lambda *a: calls.append("norm") or (a[0], a[0]),
                                                         lambda x, c, s: calls.append("rot") or x,
                                                         lambda g: calls.append("silu") or g[:, :g.shape[1] // 2])})
    weight = torch.ones(64)
    fused.add_rms_norm(torch.randn(2, 64), None, weight, 1e-5)
    fused.add_rms_norm(torch.randn(20, 64), None, weight, 1e-5)  # a prompt chunk: torch's norm (as fast)
    fused.add_rms_norm(torch.randn(2, 64).bfloat16(), None, weight.bfloat16(), 1e-5)  # not float32: torch
    cos = sin = torch.ones(2, 16)
    fused.rotate(torch.randn(2, 4, 16), torch.randn(2, 2, 16), cos, sin)
    fused.silu_and_mul(torch.randn(2, 32))
    fused.silu_and_mul(torch.randn(20, 32))  # a prompt chunk: native too, its rows over threads
    fused.silu_and_mul(torch.randn(2, 32).bfloat16())  # not float32: torch
    assert calls == ["norm", "rot", "rot", "silu", "silu"]


@pytest.mark.skipif(small_ops is None, reason="no AVX2/FMA or no C compiler here")
def test_prompt_chunks_of_the_small_ops_split_over_threads_and_equal_torch():
    from llamarun.kernels.activation import silu_and_mul_reference
    from llamarun.layers.rotary import apply_rotary

    gen = torch.Generator().manual_seed(9)
    gate_up = torch.randn(37, 2 * 96, generator=gen) * 4  # 37 rows: over PARALLEL_ROWS, an OpenMP team
    torch.testing.assert_close(small_ops[2](gate_up), silu_and_mul_reference(gate_up), rtol=1e-6, atol=1e-6)
    qkv = torch.randn(37, 5 * 32, generator=gen)
    q = qkv[:, :3 * 32].view(37, 3, 32)  # strided, as the merged projection's split gives
    angles = torch.rand(37, 16, generator=gen) * 6
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    torch.testing.assert_close(small_ops[1](q, cos, sin), apply_rotary(q, cos, sin), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(small_ops is None, reason="no AVX2/FMA or no C compiler here")
def test_silu_mul_equals_the_torch_formula():
    from llamarun.kernels.activation import silu_and_mul_reference

    gate_up = torch.randn(3, 2 * 1536, generator=torch.Generator().manual_seed(6)) * 4
    torch.testing.assert_close(small_ops[2](gate_up), silu_and_mul_reference(gate_up), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(attention is None, reason="no AVX2/FMA or no C compiler here")
def test_decode_attention_stores_the_steps_keys_and_values_first():
    """With `new`, the call writes each sequence's new key and value to its slot (as index_copy_ would), then
    attends over them: the slabs and the output equal the two-step path's."""
    gen = torch.Generator().manual_seed(8)
    heads, kv_heads, d, block_size, blocks, lens = 6, 2, 32, 16, 12, [3, 20]
    k_slab = torch.randn(kv_heads, blocks * block_size, d, generator=gen)
    v_slab = torch.randn(kv_heads, blocks * block_size, d, generator=gen)
    tables = torch.tensor([[4, 0], [7, 2]], dtype=torch.int32)
    slots = torch.tensor([4 * 16 + 2, 2 * 16 + 3], dtype=torch.int64)  # each sequence's last position
    q = torch.randn(2, heads, d, generator=gen)
    qkv = torch.randn(2, (heads + 2 * kv_heads) * d, generator=gen)  # k and v as strided views of one row
    k = qkv[:, heads * d:(heads + kv_heads) * d].view(2, kv_heads, d)
    v = qkv[:, (heads + kv_heads) * d:].view(2, kv_heads, d)
    want_k, want_v = k_slab.clone(), v_slab.clone()
    want_k.index_copy_(1, slots, k.transpose(0, 1))
    want_v.index_copy_(1, slots, v.transpose(0, 1))
    lens_t = torch.tensor(lens, dtype=torch.int32)
    want = attention(q, want_k, want_v, tables, lens_t, block_size)
    got = attention(q, k_slab, v_slab, tables, lens_t, block_size, new=(k, v, slots))
    assert torch.equal(k_slab, want_k) and torch.equal(v_slab, want_v)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not fit"):
        attention(q, k_slab, v_slab, tables, lens_t, block_size, new=(k, v, slots.int()))


prefill = build.load_prefill_attention()


@pytest.mark.skipif(prefill is None, reason="no AVX2/FMA or no C compiler here")
@pytest.mark.parametrize("n, ctx, heads, kv_heads, d", [
    (19, 19, 9, 3, 64),  # a whole prompt, the default model's heads; 19 keys: a block's tail of 3
    (5, 37, 9, 3, 64),  # a later chunk: its rows see the cached context too
    (12, 12, 4, 4, 32),  # no grouping
    (7, 21, 4, 2, 16),  # d not a multiple of 32: a head at a time (attend_part)
])
def test_prefill_attention_equals_sdpa_over_the_gathered_context(n, ctx, heads, kv_heads, d):
    from llamarun.attention.paged_torch import _prefill

    gen = torch.Generator().manual_seed(n + ctx)
    block_size, blocks = 8, 12
    k_slab = torch.randn(kv_heads, blocks * block_size, d, generator=gen)
    v_slab = torch.randn(kv_heads, blocks * block_size, d, generator=gen)
    table = torch.randperm(blocks, generator=gen)[: -(-ctx // block_size)].int()
    pos = torch.arange(ctx)
    slots = table.long()[pos // block_size] * block_size + pos % block_size
    q = torch.randn(n, heads, d, generator=gen)
    want = _prefill(q, k_slab[:, slots], v_slab[:, slots])
    torch.testing.assert_close(prefill(q, k_slab, v_slab, table, ctx, block_size), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):  # a table too short for the context: refused, not read
        prefill(q, k_slab, v_slab, table[:1], ctx + block_size, block_size)
