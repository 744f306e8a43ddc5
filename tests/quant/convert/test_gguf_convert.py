"""GGUF blocks -> packed layouts: Q4_0/Q4_1/Q4_K exactly (against the gguf package), others re-quantized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from llamarun.errors import CheckpointError
from llamarun.loaders.gguf.ggml_types import BLOCK_GEOMETRY, GGMLType
from llamarun.quant.convert.gguf import gguf_to_packed
from llamarun.quant.convert.requantize import int8_per_channel
from llamarun.quant.layouts import Int4Weight, Int8Weight, dequantize

SHAPE = (12, 512)


def raw_bytes(packed: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(packed).view(np.uint8).reshape(-1).copy())


def random_weights(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * rng.uniform(0.01, 10, (SHAPE[0], 1))).astype(np.float32)
    x[0] = 0.0  # an all-zero row
    x[1, :32] = -3.0  # a constant block
    return x


def random_k_blocks(qtype: Q, n_blocks: int, scale_at: tuple[int, ...], seed: int) -> np.ndarray:
    """Random K-quant blocks whose float16 scale fields hold finite values (zeros and the largest half too)."""
    rng = np.random.default_rng(seed)
    _, size = BLOCK_GEOMETRY[GGMLType(qtype)]
    blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for at in scale_at:
        scale = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        scale[:3] = [0.0, -0.0, 65504.0]
        blocks[:, at:at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return blocks


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=lambda t: t.name)
def test_legacy_int4_blocks_are_exact(qtype: Q):
    packed = ref_quantize(random_weights(int(qtype)), qtype)
    conv = gguf_to_packed(raw_bytes(packed), int(qtype), SHAPE)
    assert conv.exact and isinstance(conv.weight, Int4Weight) and conv.weight.group_size == 32
    assert conv.weight.scales.dtype == torch.float16  # the file's own halves, no widening needed
    ref = torch.from_numpy(ref_dequantize(packed, qtype).reshape(SHAPE))
    assert torch.equal(dequantize(conv.weight), ref)


def test_q4_k_is_exact_with_float32_sub_block_scales():
    n_blocks = SHAPE[0] * SHAPE[1] // 256
    blocks = random_k_blocks(Q.Q4_K, n_blocks, (0, 2), seed=4)
    conv = gguf_to_packed(raw_bytes(blocks), int(Q.Q4_K), SHAPE)
    assert conv.exact and conv.weight.group_size == 32 and conv.weight.scales.dtype == torch.float32
    ref = torch.from_numpy(ref_dequantize(blocks, Q.Q4_K).reshape(SHAPE))
    assert torch.equal(dequantize(conv.weight), ref)


def test_q4_0_with_huge_scales_widens_instead_of_overflowing():
    blocks = ref_quantize(random_weights(1), Q.Q4_0).copy()
    blocks.view(np.uint8).reshape(-1, 18)[0, :2] = np.array([60000.0], dtype=np.float16).view(np.uint8)
    conv = gguf_to_packed(raw_bytes(blocks), int(Q.Q4_0), SHAPE)
    assert conv.weight.mins.dtype == torch.float32 and torch.isfinite(conv.weight.mins).all()
    assert torch.equal(dequantize(conv.weight), torch.from_numpy(ref_dequantize(blocks, Q.Q4_0).reshape(SHAPE)))


def test_q8_0_is_requantized_per_channel_with_its_error_measured():
    packed = ref_quantize(random_weights(8), Q.Q8_0)
    conv = gguf_to_packed(raw_bytes(packed), int(Q.Q8_0), SHAPE)
    ref = torch.from_numpy(ref_dequantize(packed, Q.Q8_0).reshape(SHAPE))
    assert not conv.exact and isinstance(conv.weight, Int8Weight) and conv.source == "Q8_0"
    measured = float((dequantize(conv.weight) - ref).norm() / ref.norm())
    assert conv.error == pytest.approx(measured, rel=1e-5) and 0 < conv.error < 0.01
    # never worse than the plain max|w| / 127 scale
    plain_scale = ref.abs().amax(1).clamp(min=1e-30) / 127
    plain = torch.round(ref / plain_scale[:, None]) * plain_scale[:, None]
    assert conv.error <= float((plain - ref).norm() / ref.norm()) + 1e-7


def test_q6_k_is_requantized_and_float_types_stay_float():
    n_blocks = SHAPE[0] * SHAPE[1] // 256
    blocks = random_k_blocks(Q.Q6_K, n_blocks, (208,), seed=6)
    blocks.view(np.uint8)[:3, 208:210] = np.array([0.01], dtype=np.float16).view(np.uint8)  # no 65504 rows
    conv = gguf_to_packed(raw_bytes(blocks), int(Q.Q6_K), SHAPE)
    assert not conv.exact and conv.target == "int8 per channel" and conv.error < 0.01
    f32 = torch.randn(SHAPE)
    assert gguf_to_packed(f32.view(torch.uint8).reshape(-1), int(Q.F32), SHAPE) is None


def test_truncated_blocks_are_a_clear_error():
    packed = raw_bytes(ref_quantize(random_weights(2), Q.Q4_1))
    with pytest.raises(CheckpointError, match="Q4_1"):
        gguf_to_packed(packed[:-20], int(Q.Q4_1), SHAPE)


def test_requantize_of_an_all_zero_row_is_zero():
    w = torch.randn(3, 64)
    w[1] = 0
    packed, error = int8_per_channel(w)
    assert torch.equal(dequantize(packed)[1], torch.zeros(64)) and error < 0.01
