"""The FP8 words GEMV (kernels/fp8_gemv.py): exact float32 sums of e4m3 weights times the activations."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels import fp8_gemv
from llamarun.kernels.activation import silu_and_mul_reference

SPECIAL = [0.0, -0.0, 2 ** -9, -2 ** -7, 2 ** -6, 448.0, -448.0, 1.5, 0.875, -3.25]  # subnormals, zeros, the ends


def _weight(n: int, k: int, device: str) -> torch.Tensor:
    w = (torch.randn(n, k) * 60).to(torch.float8_e4m3fn)
    w[0, :len(SPECIAL)] = torch.tensor(SPECIAL).to(torch.float8_e4m3fn)
    return w.to(device)


def _reference(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, silu: bool) -> torch.Tensor:
    xs = silu_and_mul_reference(x) if silu else x
    return xs.float() @ (w.float() * scale.reshape(-1, 1).float()).t()


@pytest.mark.parametrize("n,k", [(40, 256), (37, 576), (8, 1024 + 64)])  # odd rows; 576 and 1088 narrow the tile to 64
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gemv_fp8_is_exact_in_float32(n, k, silu, per_channel, device, dtype):
    w = _weight(n, k, device)
    scale = (torch.rand(n if per_channel else 1) + 0.5).to(device)
    x = torch.randn(1, 2 * k if silu else k).to(dtype).to(device)
    y = fp8_gemv.gemv_fp8(x, w, scale, out=torch.empty(1, n, device=device), silu_input=silu)
    want = _reference(x, w, scale, silu)
    # float32 sums in another order: a few units of the last place of the largest partial sums
    torch.testing.assert_close(y, want, atol=1e-5 * want.abs().max().item(), rtol=1e-5)


def test_gemv_fp8_rounds_to_the_activation_dtype(device, dtype):
    w = _weight(24, 512, device)
    scale = torch.rand(24, device=device) * 0.01
    x = torch.randn(1, 512).to(dtype).to(device)
    y = fp8_gemv.gemv_fp8(x, w, scale)
    assert y.dtype == dtype and y.shape == (1, 24)
    torch.testing.assert_close(y.float(), _reference(x, w, scale, False), atol=2e-2 * y.float().abs().max().item(),
                               rtol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the inline assembly runs on GPUs only")
def test_gemv_fp8_assembly_equals_the_integer_decoding():
    w = _weight(300, 2048, "cuda")
    scale = torch.rand(300, device="cuda")
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    with_asm = fp8_gemv.gemv_fp8(x, w, scale, out=torch.empty(1, 300, device="cuda"))
    fp8_gemv.USE_ASM = False
    try:
        plain = fp8_gemv.gemv_fp8(x, w, scale, out=torch.empty(1, 300, device="cuda"))
    finally:
        fp8_gemv.USE_ASM = True
    torch.testing.assert_close(with_asm, plain, atol=0, rtol=0)


@pytest.mark.parametrize("bad", ["k", "rows", "dtype", "offset"])
def test_gemv_fp8_refuses_what_it_cannot_read(bad, device):
    k = 72 if bad == "k" else 256  # not a multiple of 16
    w = _weight(16, k + (4 if bad == "offset" else 0), device)
    if bad == "offset":
        w = w[:, 1:k + 1]  # a column slice: its words would straddle rows
    if bad == "dtype":
        w = w.float().to(torch.float8_e5m2)
    x = torch.randn(2 if bad == "rows" else 1, k, device=device)
    with pytest.raises(ValueError, match="gemv_fp8"):
        fp8_gemv.gemv_fp8(x, w, torch.ones(16, device=device))
