"""The native W4A8 decode kernel (kernels/cpu/gemv_w4a8.c) and Int4Linear's use of it, against the torch reference."""

from __future__ import annotations

import pytest
import torch

from llamarun.kernels.cpu import build, w4a8_layout
from llamarun.quant.int4 import NATIVE_MAX_ROWS, Int4Linear
from llamarun.quant.layouts import Int4Weight, dequantize, pack_nibbles

native = build.load_w4a8()
gemm = build.load_gemm_w4a8()
needs_native = pytest.mark.skipif(native is None, reason="no AVX2/FMA or no C compiler here")
needs_gemm = pytest.mark.skipif(gemm is None, reason="no AVX2/FMA or no C compiler here")
# The default model's linears (N, K): o_proj, q/k/v merged, k or v alone (3 kv heads x 64), gate/up, down.
MODEL_SHAPES = [(576, 576), (960, 576), (192, 576), (3072, 576), (576, 1536)]


def _weight(n: int, k: int, group: int, seed: int, dtype: torch.dtype = torch.float16) -> Int4Weight:
    """Random 4-bit weights shaped like GGUF Q4_1's: a positive scale and a minimum near -8 scales per group."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=gen)
    scales = torch.rand(n, k // group, generator=gen) * 0.02 + 0.001
    mins = -scales * (8 + torch.randn(n, k // group, generator=gen))
    return Int4Weight(pack_nibbles(q), scales.to(dtype), mins.to(dtype), group)


def _kernel_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the kernel sees it: each block of 32 rounded to integer steps of max|block| / 32639 (times the inverse
    step, half to even, as the kernel computes it); 32639 = 127 * 256 + 127, the largest integer whose two signed
    byte planes hold it."""
    m, k = x.shape
    blocks = x.view(m, k // 32, 32)  # [M, K / 32, 32]
    step = blocks.abs().amax(-1, keepdim=True) / 32639
    inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
    return (torch.round(blocks * inverse) * step).view(m, k)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@needs_native
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("rows", range(1, NATIVE_MAX_ROWS + 1))
@pytest.mark.parametrize("n", [37, 5, 1, 258])  # odd and tiny N take the 1..3-row tails of each tile
def test_kernel_equals_the_product_of_its_16_bit_activations_to_float_rounding(group, rows, n):
    w = _weight(n, 256, group, seed=n + rows)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows))
    got = native(x, w4a8_layout.to_records(w), n)
    want = _kernel_activations(x).double() @ dequantize(w).double().t()  # [rows, n]
    assert got.shape == (rows, n) and got.dtype == torch.float32
    # Only float32 rounding differs (4e-7 measured): the integer dot is exact. A low byte plane lost or
    # mis-signed errs by up to 1/256 of each activation, a high one wrong by far more.
    assert _rel(got, want) < 2e-6


@needs_native
@pytest.mark.parametrize("rows", [1, 5])
def test_the_byte_split_holds_at_its_edges(rows):
    # Per block: the extremes +-max (integers +-32639, whose high bytes are +-127), values on the rounding
    # boundaries of the high byte (x = 256 h +- 128), zeros, and blocks of very different magnitudes.
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 8, 32, generator=gen)  # [rows, blocks, 32]
    peak = x.abs().amax(-1, keepdim=True)  # [rows, blocks, 1]
    x[..., 0], x[..., 1] = peak[..., 0], -peak[..., 0]
    for i, v in enumerate((128, -128, 384, -384, 32384, -32384, 127, -129)):
        x[..., 2 + i] = peak[..., 0] * v / 32639
    x[:, 3] = 0.0  # a block of zeros: scale 0, no division by it
    x[:, 4] *= 1e-6
    x[:, 5] *= 1e4
    x = x.view(rows, 256)
    w = _weight(9, 256, 32, seed=rows)
    got = native(x, w4a8_layout.to_records(w), 9)
    want = _kernel_activations(x).double() @ dequantize(w).double().t()
    assert torch.isfinite(got).all() and _rel(got, want) < 2e-6


@needs_native
@pytest.mark.parametrize("n, k", MODEL_SHAPES)
@pytest.mark.parametrize("rows", [1, 4, 8])
def test_kernel_is_within_the_16_bit_activation_error_of_the_exact_product(n, k, rows):
    w = _weight(n, k, 32, seed=k + rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(n))
    got = native(x, w4a8_layout.to_records(w), n)
    want = x.double() @ dequantize(w).double().t()
    # Rounding a block to steps of max|block| / 32639 errs by step / sqrt(12) on average, about 0.002% of the
    # activations' RMS for Gaussian blocks of 32 (2.2e-5 measured on these shapes); int8 steps gave 0.5%.
    assert _rel(got, want) < 5e-5


@needs_native
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_layout_round_trips_exactly_through_the_records(group, dtype):
    w = _weight(48, 384, group, seed=group, dtype=dtype)
    layer = Int4Linear(w)
    assert hasattr(layer, "records")
    back = layer.layout()
    assert torch.equal(back.qweight, w.qweight) and back.group_size == group
    assert torch.equal(back.scales, w.scales) and torch.equal(back.mins, w.mins)
    assert back.scales.dtype == dtype


@needs_gemm
def test_int4_linear_takes_the_gemv_for_decode_rows_and_the_gemm_for_the_rest(monkeypatch):
    w = _weight(64, 128, 32, seed=7)
    layer = Int4Linear(w)
    assert not hasattr(layer, "qweight_cpu")  # one copy of the weights: no PyTorch packing beside the records
    calls = []
    counted = lambda name, fn: lambda x, r, n: calls.append((name, tuple(x.shape), x.dtype)) or fn(x, r, n)  # noqa: E731
    monkeypatch.setattr(build, "_loaded", {"gemv_w4a8": counted("gemv", native), "gemm_w4a8": counted("gemm", gemm)})
    gen = torch.Generator().manual_seed(1)
    exact = dequantize(w)
    for rows in (1, 8, 9, 40):  # 9 and 40 rows: prompt chunks
        x = torch.randn(rows, 128, generator=gen)
        assert _rel(layer(x), x @ exact.t()) < 5e-5
    y = layer(torch.randn(2, 128, generator=gen).bfloat16())  # not float32: the GEMM in float32, cast back
    assert y.dtype == torch.bfloat16
    layer(torch.randn(2, 3, 128, generator=gen))  # [batch, tokens, K]: six rows, flattened
    assert calls == [("gemv", (1, 128), torch.float32), ("gemv", (8, 128), torch.float32),
                     ("gemm", (9, 128), torch.float32), ("gemm", (40, 128), torch.float32),
                     ("gemm", (2, 128), torch.float32), ("gemv", (6, 128), torch.float32)]


@needs_native
def test_prompt_gemm_off_keeps_pytorchs_kernel_for_prompts(monkeypatch):
    monkeypatch.setenv("LLAMARUN_CPU_PROMPT_GEMM", "off")
    w = _weight(64, 128, 32, seed=7)
    layer = Int4Linear(w)
    assert hasattr(layer, "records") and hasattr(layer, "qweight_cpu")
    calls = []
    monkeypatch.setattr(build, "_loaded", {"gemv_w4a8": lambda x, r, n: calls.append(x.shape[0]) or native(x, r, n)})
    x = torch.randn(40, 128, generator=torch.Generator().manual_seed(1))
    assert _rel(layer(x), x @ dequantize(w).t()) < 0.02  # bf16 activations in PyTorch's kernel
    layer(x[:3])
    assert calls == [3]


@needs_gemm
@pytest.mark.parametrize("rows", [9, 17, 191])
@pytest.mark.parametrize("n, k, group", [(37, 256, 32), (258, 96, 32), (5, 128, 64), (192, 576, 32), (64, 1536, 128)])
def test_gemm_equals_the_product_of_its_16_bit_activations_to_float_rounding(rows, n, k, group):
    # Odd row counts (the one-row tail after the kernel's passes of several rows), odd N (the last tile's 1-3
    # rows), K of 3 to 48 blocks and group sizes repeating their scale over blocks.
    w = _weight(n, k, group, seed=n + rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
    got = gemm(x, w4a8_layout.to_records(w), n)
    want = _kernel_activations(x).double() @ dequantize(w).double().t()  # [rows, n]
    assert got.shape == (rows, n) and got.dtype == torch.float32
    assert _rel(got, want) < 2e-6  # float32 rounding only: the integer dot is exact
    if rows <= 17:  # the same activation quantization as the decode GEMV, so prompt and decode rows agree
        assert _rel(got[:8], native(x[:8], w4a8_layout.to_records(w), n)) < 2e-6


@needs_gemm
def test_gemm_holds_the_16_bit_range_at_its_edges():
    # The extremes +-max|block| (integers +-32639), zeros, and blocks of very different magnitudes.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(11, 8, 32, generator=gen)  # [rows, blocks, 32]
    peak = x.abs().amax(-1, keepdim=True)
    x[..., 0], x[..., 1] = peak[..., 0], -peak[..., 0]
    x[:, 3] = 0.0
    x[:, 4] *= 1e-6
    x[:, 5] *= 1e4
    x = x.view(11, 256)
    w = _weight(13, 256, 32, seed=3)
    got = gemm(x, w4a8_layout.to_records(w), 13)
    want = _kernel_activations(x).double() @ dequantize(w).double().t()
    assert torch.isfinite(got).all() and _rel(got, want) < 2e-6


@needs_gemm
def test_gemm_refuses_records_that_do_not_fit():
    records = w4a8_layout.to_records(_weight(8, 128, 32, seed=6))
    with pytest.raises(ValueError, match="do not fit"):  # another K
        gemm(torch.randn(20, 64), records, 8)
    with pytest.raises(ValueError, match="do not fit"):  # more rows than the records hold
        gemm(torch.randn(20, 128), records, 9)
    with pytest.raises(ValueError, match="do not fit"):  # not float32
        gemm(torch.randn(20, 128).double(), records, 8)
    assert gemm(torch.randn(0, 128), records, 8).shape == (0, 8)


def test_kernels_off_keep_pytorchs_path_and_the_layout(monkeypatch):
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setenv(build.ENV, "off")
    w = _weight(64, 128, 32, seed=3)
    layer = Int4Linear(w)
    assert not hasattr(layer, "records")
    assert torch.equal(layer.layout().qweight, w.qweight)
    x = torch.randn(1, 128, generator=torch.Generator().manual_seed(2))
    assert _rel(layer(x), x @ dequantize(w).t()) < 0.02  # bf16 activations in PyTorch's kernel


@needs_native
def test_shapes_the_kernel_cannot_take_fall_back(monkeypatch):
    # Groups of 16 split the kernel's 32-input blocks: the reference (expand, then matmul) runs, exactly.
    w = _weight(24, 96, 16, seed=5)
    layer = Int4Linear(w)
    assert not hasattr(layer, "records")
    x = torch.randn(1, 96, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(layer(x), x @ dequantize(w).t())
    with pytest.raises(ValueError, match="multiples of 32"):
        w4a8_layout.to_records(w)
    with pytest.raises(ValueError, match="do not fit"):  # records of another K: an error, never a bad read
        native(torch.randn(1, 64), w4a8_layout.to_records(_weight(8, 128, 32, seed=6)), 8)
    with pytest.raises(ValueError, match="do not fit"):  # more rows than the records hold
        native(torch.randn(1, 128), w4a8_layout.to_records(_weight(8, 128, 32, seed=6)), 9)
