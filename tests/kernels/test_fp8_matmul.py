"""The FP8 weight-only kernels against the reference dequantization, the fused silu input included."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.activation import silu_and_mul_reference
from llamarun.kernels.fp8_matmul import fp8_matmul
from llamarun.quant.layouts import Fp8Weight, dequantize


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = 3e-2 if actual.dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol * expected.abs().max().item(), rtol=tol)


def _fp8(n: int, k: int, per_channel: bool, device: str) -> Fp8Weight:
    w = torch.randn(n, k)
    scale = (w.abs().amax(dim=1) / 448.0) if per_channel else (w.abs().amax() / 448.0).reshape(1)
    q = (w / scale.reshape(-1, 1)).to(torch.float8_e4m3fn)
    return Fp8Weight(q.to(device), scale.float().to(device))


@pytest.mark.parametrize("rows", [1, 4, 16, 24])  # the skinny kernel, then dequantize + matmul
@pytest.mark.parametrize("per_channel", [True, False])
def test_fp8_matmul_matches_reference(rows, per_channel, device, dtype):
    w = _fp8(48, 1536, per_channel, device)
    x = torch.randn(rows, 1536).to(dtype).to(device)
    y = fp8_matmul(x, w)
    _close(y, x.float() @ dequantize(w).float().t())


@pytest.mark.parametrize("rows", [1, 5])  # the GEMV and the skinny kernel
def test_fp8_matmul_takes_a_width_no_wide_tile_divides(rows, device, dtype):
    """576 (the default model's width) is 9 x 64: the tile narrows instead of refusing the shape."""
    w = _fp8(40, 576, True, device)
    x = torch.randn(rows, 576).to(dtype).to(device)
    _close(fp8_matmul(x, w), x.float() @ dequantize(w).float().t())


@pytest.mark.parametrize("rows", [1, 3])  # the GEMV and the skinny kernel
def test_fp8_matmul_reads_silu_of_gate_times_up(rows, device, dtype):
    k = 256
    w = _fp8(24, k, True, device)
    gate_up = (torch.randn(rows, 2 * k) * 3).to(dtype).to(device)
    _close(fp8_matmul(gate_up, w, silu_input=True), silu_and_mul_reference(gate_up).float() @ dequantize(w).t())


def test_skinny_matmul_refuses_bad_shapes(device, dtype):
    from llamarun.kernels.skinny_matmul import skinny_matmul

    w = _fp8(8, 64, True, device)
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_matmul(torch.randn(17, 64).to(dtype).to(device), w.weight, w.scale)
    with pytest.raises(ValueError, match="does not match"):
        skinny_matmul(torch.randn(1, 32).to(dtype).to(device), w.weight, w.scale)


@pytest.mark.parametrize("rows", [1, 4, 20])  # GEMV, skinny, expand + matmul
def test_int8_weights_take_the_same_kernels(rows, device, dtype):
    from llamarun.kernels.fp8_matmul import scaled_matmul
    from llamarun.quant.layouts import Int8Weight

    q = torch.randint(-127, 128, (40, 512), dtype=torch.int8)
    w = Int8Weight(q.to(device), (torch.rand(40) * 0.01).to(device))
    x = torch.randn(rows, 512).to(dtype).to(device)
    _close(scaled_matmul(x, w), x.float() @ dequantize(w).t())
