"""RMSNorm kernels against layers/norm.py, including the fused residual add and its in-place outputs."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.norm import fused_add_rms_norm, rms_norm
from llamarun.layers.fused import rms_norm_torch
from llamarun.layers.norm import RMSNorm


def _module(hidden: int, dtype: torch.dtype, device: str) -> RMSNorm:
    norm = RMSNorm(hidden, 1e-5).to(device)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden) * 0.5 + 1)
    return norm.to(dtype)


@pytest.mark.parametrize("hidden", [64, 576])  # 576 (SmolLM2) is not a power of two: masked tail
def test_rms_norm_matches_module(assert_close, device, dtype, hidden):
    norm = _module(hidden, dtype, device)
    x = (torch.randn(5, hidden) * 3).to(dtype).to(device)
    assert_close(rms_norm(x, norm.weight, 1e-5), rms_norm_torch(x, norm.weight, 1e-5))


def test_float32_weight_promotes_like_torch(assert_close, device, dtype):
    norm = _module(64, torch.float32, device)
    x = torch.randn(3, 64).to(dtype).to(device)
    out = rms_norm(x, norm.weight, 1e-5)
    expected = rms_norm_torch(x, norm.weight, 1e-5)
    assert out.dtype == expected.dtype == torch.float32
    assert_close(out, expected)


def test_fused_add_norm_in_place(assert_close, device, dtype):
    norm = _module(576, dtype, device)
    x = torch.randn(4, 576).to(dtype).to(device)
    residual = torch.randn(4, 576).to(dtype).to(device)
    summed = x + residual
    expected = rms_norm_torch(summed, norm.weight, 1e-5)
    normed, new_residual = fused_add_rms_norm(x, residual, norm.weight, 1e-5)
    assert normed.data_ptr() == x.data_ptr() and new_residual.data_ptr() == residual.data_ptr()
    assert torch.equal(new_residual, summed)  # the add rounds exactly as torch's does
    assert_close(normed, expected)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("with_residual", [True, False])
def test_norm_with_int4_planes_equals_the_norm_then_the_planes_kernel(assert_close, device, dtype, rows,
                                                                       with_residual):
    """The fused kernel's norm and sum are norm.py's, and its planes are exactly those the planes kernel makes of
    that norm: the same integers and block scales (the group sums may differ in summation order only)."""
    from llamarun.kernels.int4_gemv import activation_planes
    from llamarun.kernels.norm_planes import add_rms_norm_planes

    group, hidden = 64, 256
    norm = _module(hidden, dtype, device)
    x = (torch.randn(rows, hidden) * 3).to(dtype).to(device)
    x[0, 5] = 40.0  # an outlier sets its block's scale
    residual = torch.randn(rows, hidden).to(dtype).to(device) if with_residual else None
    x_before = x.clone()
    normed, summed, (planes, scales, sums) = add_rms_norm_planes(x, residual, norm.weight, 1e-5, group)
    total = x_before + residual if with_residual else x_before
    assert torch.equal(summed, total)
    assert torch.equal(x, x_before)  # out of place: the programs read the whole row
    assert_close(normed, rms_norm_torch(total, norm.weight, 1e-5))
    ref_planes, ref_scales, ref_sums = activation_planes(normed, group)
    assert torch.equal(planes, ref_planes) and torch.equal(scales, ref_scales)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-4)


def test_norm_with_planes_refuses_rows_it_cannot_take(device):
    from llamarun.kernels.norm_planes import add_rms_norm_planes, takes

    weight = torch.ones(96, device=device)
    assert not takes(torch.zeros(9, 128, device=device), 64)  # more rows than the INT4 GEMV takes
    assert not takes(torch.zeros(1, 96, device=device), 64)  # not whole groups
    with pytest.raises(ValueError, match="whole groups of 64"):
        add_rms_norm_planes(torch.zeros(1, 96, device=device), None, weight, 1e-5, 64)
