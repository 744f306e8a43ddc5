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
