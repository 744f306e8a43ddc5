"""The W4A16 kernels against the reference dequantize-then-matmul, at decode and prefill row counts."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.int4_matmul import int4_matmul
from llamarun.quant.layouts import Int4Weight, dequantize, pack_nibbles


def random_int4(n: int, k: int, group: int, scale_dtype: torch.dtype, device: str, seed: int = 0) -> Int4Weight:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scales = (torch.rand(n, k // group, generator=gen) * 0.02 + 0.005).to(scale_dtype)
    mins = (-8 * scales.float() + torch.randn(n, k // group, generator=gen) * 0.01).to(scale_dtype)
    return Int4Weight(pack_nibbles(q).to(device), scales.to(device), mins.to(device), group)


@pytest.mark.parametrize("rows", [1, 3, 16, 20])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_matmul_matches_reference(rows, group, device, dtype):
    n, k = 40, 1536  # a ragged last block of output channels; K not a power of two
    w = random_int4(n, k, group, torch.float16, device, seed=rows + group)
    x = torch.randn(rows, k).to(dtype).to(device)
    y = int4_matmul(x, w)
    expected = x.float() @ dequantize(w).float().t()
    assert y.shape == (rows, n) and y.dtype == dtype
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(y.float(), expected, atol=tol * expected.abs().max().item(), rtol=tol)


def test_int4_matmul_uses_the_minimums_and_group_scales(device, dtype):
    """A swapped nibble order, a wrong group index or a dropped minimum would each change this answer."""
    n, k, group = 4, 64, 32
    q = torch.zeros(n, k, dtype=torch.uint8)
    q[0, 1] = 15  # odd k: the high nibble of byte 0
    q[1, 40] = 3  # second group
    scales = torch.ones(n, 2, dtype=torch.float32)
    scales[1, 1] = 2.0
    mins = torch.zeros(n, 2, dtype=torch.float32)
    mins[2, 0] = -1.0
    w = Int4Weight(pack_nibbles(q).to(device), scales.to(device), mins.to(device), group)
    x = torch.zeros(1, k)
    x[0, 1], x[0, 40], x[0, 0] = 1.0, 1.0, 0.5
    y = int4_matmul(x.to(dtype).to(device), w).float().cpu()
    assert y[0, 0].item() == 15.0
    assert y[0, 1].item() == 6.0  # 3 * 2.0 in group 1
    assert y[0, 2].item() == -1.5  # minimum -1 of group 0 times its inputs (0.5 + 1); group 1's 1.0 adds nothing


@pytest.mark.parametrize("rows", [1, 2])  # the GEMV and the skinny kernel
def test_int4_matmul_reads_silu_of_gate_times_up(rows, device, dtype):
    from llamarun.kernels.activation import silu_and_mul_reference

    k = 256
    w = random_int4(24, k, 64, torch.float16, device, seed=3)
    gate_up = (torch.randn(rows, 2 * k) * 3).to(dtype).to(device)
    y = int4_matmul(gate_up, w, silu_input=True)
    expected = silu_and_mul_reference(gate_up).float() @ dequantize(w).float().t()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(y.float(), expected, atol=tol * expected.abs().max().item(), rtol=tol)


@pytest.mark.parametrize("group", [32, 128])
def test_dequantize_to_equals_the_reference(group, device, dtype):
    from llamarun.kernels.dequantize import dequantize_to

    w = random_int4(24, 512, group, torch.bfloat16, device, seed=group)
    expected = dequantize(w, dtype)
    # The kernel computes q s + m as one fused multiply-add: at most one rounding step of the dtype apart.
    torch.testing.assert_close(dequantize_to(w, dtype), expected, rtol=8e-3 if dtype == torch.bfloat16 else 1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("silu", [False, True])
def test_splitting_k_gives_the_unsplit_answer(silu, device, dtype, monkeypatch):
    """5-16 rows of a weight with few output rows split K over programs (float32 partials, then one add)."""
    from llamarun.kernels import skinny_matmul as skinny

    rows, n, k, group = 9, 64, 2048, 128
    assert skinny.k_splits(n, k, 64, 128, skinny.sm_count(torch.device(device))) > 1
    w = random_int4(n, k, group, torch.bfloat16, device, seed=5)
    x = (torch.randn(rows, 2 * k if silu else k) * 2).to(dtype).to(device)
    split = skinny.skinny_matmul(x, w.qweight, w.scales, w.mins, group, silu_input=silu)
    monkeypatch.setattr(skinny, "SPLIT_K", False)
    whole = skinny.skinny_matmul(x, w.qweight, w.scales, w.mins, group, silu_input=silu)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5  # float32 partials added in another order
    torch.testing.assert_close(split.float(), whole.float(), atol=tol * whole.abs().max().item(), rtol=tol)


def test_k_splits_fill_the_card_with_whole_tiles():
    from llamarun.kernels.skinny_matmul import MIN_SPLIT_TILES, k_splits

    assert k_splits(8192, 8192, 64, 128, 132) == 4  # 70B's o: 128 programs -> 512
    assert k_splits(57344, 8192, 64, 128, 132) == 1  # 70B's gate/up already has 896 programs
    assert k_splits(8192, 28672, 64, 128, 132) == 4  # 224 tiles: 56 per range
    for n, k in ((64, 1024), (4096, 14336), (200, 384)):
        split = k_splits(n, k, 64, 128, 132)
        assert (k // 128) % split == 0 and (split == 1 or (k // 128) // split >= MIN_SPLIT_TILES)


@pytest.mark.parametrize(("n", "k", "gemv_rows"), [(512, 128, 8), (256, 256, 6), (128, 512, 4)])  # gate/up, o, down
def test_decode_rows_take_the_gemv_up_to_the_crossover_of_the_shape(n, k, gemv_rows, device, dtype, monkeypatch):
    from llamarun.kernels import int4_matmul as module

    w = random_int4(n, k, 64, torch.float16, device)
    took = []
    gemv, skinny = module.gemv_int4_planes, module.skinny_matmul
    monkeypatch.setattr(module, "gemv_int4_planes", lambda *a, **kw: took.append("gemv") or gemv(*a, **kw))
    monkeypatch.setattr(module, "skinny_matmul", lambda *a, **kw: took.append("skinny") or skinny(*a, **kw))
    for rows in (gemv_rows, gemv_rows + 1):
        x = torch.randn(rows, k).to(dtype).to(device)
        expected = x.float() @ dequantize(w).float().t()
        tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(int4_matmul(x, w).float(), expected, atol=tol * expected.abs().max().item(),
                                   rtol=tol)
    assert took == ["gemv", "skinny"]
