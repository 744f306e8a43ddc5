"""The batch-1 W4A16 integer GEMV (kernels/int4_gemv.py): its activation planes and its products."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels import int4_gemv
from llamarun.kernels.activation import silu_and_mul_reference
from llamarun.kernels.int4_gemv import activation_planes, gemv_int4_planes
from llamarun.quant.layouts import Int4Weight, dequantize, pack_nibbles


def random_int4(n: int, k: int, group: int, device: str, seed: int = 0) -> Int4Weight:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    scales = torch.rand(n, k // group, generator=gen) * 0.02 + 0.005
    mins = -8 * scales + torch.randn(n, k // group, generator=gen) * 0.01
    return Int4Weight(pack_nibbles(q).to(device), scales.half().to(device), mins.half().to(device), group)


def unpack_planes(planes: torch.Tensor) -> torch.Tensor:
    """[K/8, 4] int32 planes -> the [K] int16 values they pair up: per word (x0, x2), (x4, x6), (x1, x3), (x5, x7)."""
    halves = planes.cpu().contiguous().view(torch.int16).view(-1, 4, 2).to(torch.int64)  # little-endian: low half first
    order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])  # value at k = 8c + i sits at position order[i] of the word's eight
    return halves.reshape(-1, 8)[:, order].reshape(-1)


@pytest.mark.parametrize("group", [32, 128])
def test_planes_are_the_row_in_16_bit_fixed_point(group, device):
    x = torch.randn(1, 4 * group) * 5
    x[0, :group] = 0.0  # an all-zero group must not divide by zero
    x[0, group + 3] = -1e4  # one outlier sets its group's scale
    planes, scales, sums = activation_planes(x.to(device), group)
    assert planes.shape == (1, 4 * group // 8, 4) and scales.shape == (1, 4 * group // 32)
    ints = unpack_planes(planes[0]).float().view(-1, 32)  # [K/32, 32]: one scale per block of 32
    blocks = x.view(-1, 32)
    scale = scales[0].cpu()[:, None]
    assert ints.abs().max() <= 32767
    err = (ints * scale - blocks).abs().max(dim=1).values
    assert err.le(scale[:, 0] * 0.51).all(), (err / scale[:, 0]).max()
    torch.testing.assert_close(sums[0].cpu(), x.view(-1, group).sum(dim=1), rtol=1e-5, atol=1e-4)
    assert ints[:group // 32].abs().max() == 0


@pytest.mark.parametrize("group", [32, 64, 128, 256])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 4, 8])
def test_gemv_matches_the_reference(group, silu, rows, device, dtype):
    n, k = 37, 2 * 256  # a ragged last block of rows
    w = random_int4(n, k, group, device, seed=group + silu)
    x = (torch.randn(rows, 2 * k if silu else k) * 2).to(dtype).to(device)
    x[-1] *= 50  # rows of different scales: each has its own planes
    y = gemv_int4_planes(x, w.qweight, w.scales, w.mins, group, silu_input=silu)
    expected = (silu_and_mul_reference(x) if silu else x).float() @ dequantize(w).float().t()
    assert y.shape == (rows, n) and y.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-4  # 16-bit activations: ~1e-5 of each group's largest
    for r in range(rows):  # each row against its own magnitude
        torch.testing.assert_close(y[r].float(), expected[r], atol=tol * expected[r].abs().max().item(), rtol=tol)


def test_an_outlier_costs_precision_only_within_its_block_of_32(device, dtype):
    """Fixed point loses what is below 2^-16 of a block's largest value: a 1e4 outlier must not erase the
    contribution of the rest of its weight group (here 64 inputs) where the weights amplify them."""
    group, n, k = 64, 16, 128
    q = torch.zeros(n, k, dtype=torch.uint8)
    q[:, 33:group] = 15  # the group's second block of 32
    scales = torch.ones(n, k // group)
    w = Int4Weight(pack_nibbles(q).to(device), scales.to(device), torch.zeros(n, k // group).to(device), group)
    x = torch.full((1, k), 1.0)
    x[0, 0] = 1e4  # its weight is 0: the outlier only sets the scale
    y = gemv_int4_planes(x.to(dtype).to(device), w.qweight, w.scales, w.mins, group).float().cpu()
    assert torch.allclose(y, torch.full_like(y, 15.0 * 31), rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the dp2a assembly runs on CUDA only")
def test_the_assembly_equals_the_byte_by_byte_path():
    group, n, k = 128, 512, 4096
    w = random_int4(n, k, group, "cuda", seed=7)
    x = torch.randn(3, k, device="cuda", dtype=torch.bfloat16)
    fast = gemv_int4_planes(x, w.qweight, w.scales, w.mins, group)
    int4_gemv.USE_ASM = False
    try:
        slow = gemv_int4_planes(x, w.qweight, w.scales, w.mins, group)
    finally:
        int4_gemv.USE_ASM = True
    assert torch.equal(fast, slow)  # integer arithmetic both ways: the same sums exactly


@pytest.mark.parametrize(("rows", "k", "group", "message"), [
    (9, 256, 64, "must be 1 to 8 rows"),
    (1, 256, 16, "group size 16 must be a power of two from 32 to 256"),
    (1, 96, 64, "dividing the input size 96"),
])
def test_shapes_it_cannot_take_are_clear_errors(rows, k, group, message, device):
    w = Int4Weight(torch.zeros(8, k // 2, dtype=torch.uint8, device=device),
                   torch.ones(8, k // 32, device=device), torch.zeros(8, k // 32, device=device), 32)
    with pytest.raises(ValueError, match=message):
        gemv_int4_planes(torch.zeros(rows, k, device=device), w.qweight, w.scales, w.mins, group)
