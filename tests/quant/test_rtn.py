"""Round-to-nearest quantization onto the shared layouts: error bounds, exact zeros, integer zero points."""

from __future__ import annotations

import pytest
import torch

from llamarun.errors import LlamarunError
from llamarun.quant.layouts import FP8_MAX, dequantize, unpack_nibbles
from llamarun.quant.rtn import (
    int4_zero_points,
    quantize_fp8,
    quantize_int4,
    quantize_int8,
    quantize_tokens_fp8,
    quantize_tokens_int8,
)


def _weights(n: int = 64, k: int = 512, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Rows of very different ranges, as real layers have: per-channel/group scales must follow them.
    return torch.randn(n, k, generator=gen) * torch.logspace(-3, 0, n)[:, None]


@pytest.mark.parametrize("group", [128, 64, 32])
def test_int4_error_is_at_most_half_a_step_per_group(group):
    w = _weights()
    q = quantize_int4(w, group)
    restored = dequantize(q)  # [N, K]
    step = q.scales.float().repeat_interleave(group, dim=1)  # [N, K]
    assert ((restored - w).abs() <= 0.5 * step * (1 + 1e-4) + 1e-9).all()
    rel = ((restored - w).norm() / w.norm()).item()
    assert 0.02 < rel < (0.12 if group == 128 else 0.10), rel  # 4 bits: about 10% on Gaussian rows


def test_int4_g128_relative_error_on_bf16_weights():
    w = _weights(k=1024).to(torch.bfloat16)
    q = quantize_int4(w, 128)
    assert q.scales.dtype == torch.bfloat16  # scales kept in the compute dtype
    rel = ((dequantize(q) - w.float()).norm() / w.float().norm()).item()
    assert rel < 0.12, rel


def test_int4_zero_points_are_integers_in_range_and_zero_is_exact():
    w = _weights(n=8, k=256)
    w[0, :128] = 0.0  # an all-zero group
    w[1, 128:] = w[1, 128:].abs() + 0.5  # an all-positive group: the range still includes 0
    q = quantize_int4(w, 128)
    zero = int4_zero_points(q)
    assert torch.equal(-zero.float() * q.scales.float(), q.mins.float())
    assert zero.max() <= 15
    restored = dequantize(q)
    assert torch.equal(restored[0, :128], torch.zeros(128))
    assert unpack_nibbles(q.qweight).max() <= 15


def test_int4_group_that_does_not_divide_names_one_that_does():
    with pytest.raises(LlamarunError, match="group size 128 does not divide the input size 96") as err:
        quantize_int4(torch.randn(4, 96), 128)
    assert "--group-size 32" in str(err.value)


def test_fp8_per_channel_relative_error_bounded():
    w = _weights()
    q = quantize_fp8(w)
    assert q.weight.dtype == torch.float8_e4m3fn and q.scale.shape == (64,)
    assert q.weight.float().abs().amax(dim=1).sub(FP8_MAX).abs().max() < 1e-3  # each row's max hits 448
    restored = dequantize(q)
    # e4m3 keeps 3 mantissa bits: each value is within 2^-4 of itself (relative) above the subnormals.
    big = w.abs() > q.scale[:, None] * 2**-6
    assert ((restored - w).abs()[big] <= w.abs()[big] * 2**-4 + 1e-12).all()
    rel = ((restored - w).norm() / w.norm()).item()
    assert rel < 0.03, rel


def test_int8_error_is_at_most_half_a_step():
    w = _weights()
    q = quantize_int8(w)
    step = q.scale[:, None]  # [N, 1]
    assert ((dequantize(q) - w).abs() <= 0.5 * step * (1 + 1e-5)).all()
    assert q.qweight.abs().max() == 127


def test_per_token_activation_scales():
    x = torch.randn(5, 64) * torch.tensor([0.01, 1.0, 10.0, 100.0, 1.0])[:, None]
    xq, xs = quantize_tokens_int8(x)
    assert xs.shape == (5, 1) and xq.dtype == torch.int8
    assert ((xq.float() * xs - x).abs() <= 0.5 * xs + 1e-6).all()
    fq, fs = quantize_tokens_fp8(x)
    assert fq.dtype == torch.float8_e4m3fn
    assert ((fq.float() * fs - x).norm(dim=1) / x.norm(dim=1)).max() < 0.05


def test_row_blocks_give_the_same_layout_and_leave_the_weight_alone(monkeypatch):
    from llamarun.quant import rtn

    w = _weights(n=300, k=256)
    original = w.clone()
    whole = [quantize_int4(w, 64), quantize_fp8(w), quantize_int8(w)]
    monkeypatch.setattr(rtn, "ROW_BLOCK", 7)  # blocks that do not divide the rows
    blocks = [quantize_int4(w, 64), quantize_fp8(w), quantize_int8(w)]
    for a, b in zip(whole, blocks, strict=True):
        assert torch.equal(dequantize(a), dequantize(b))
    assert torch.equal(w, original)
