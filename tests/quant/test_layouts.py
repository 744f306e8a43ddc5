"""The shared packed layouts: nibble round trips, the reference dequantization, and clear errors."""

import pytest
import torch

from llamarun.errors import LlamarunError
from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight, dequantize, pack_nibbles, unpack_nibbles


def test_nibbles_round_trip_and_order():
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = pack_nibbles(q)
    assert packed.shape == (5, 6)
    assert torch.equal(unpack_nibbles(packed), q)
    assert int(packed[0, 0]) == int(q[0, 0]) | (int(q[0, 1]) << 4)  # even k in the low nibble


def test_int4_dequantize_is_affine_per_group():
    q = torch.randint(0, 16, (3, 8), dtype=torch.uint8)
    scales = torch.tensor([[0.5, 2.0], [1.0, 1.0], [0.25, 4.0]], dtype=torch.float16)
    mins = torch.tensor([[-4.0, 1.0], [0.0, -8.0], [2.0, 0.5]], dtype=torch.float16)
    w = dequantize(Int4Weight(pack_nibbles(q), scales, mins, group_size=4))
    expected = q.float() * scales.float().repeat_interleave(4, 1) + mins.float().repeat_interleave(4, 1)
    assert torch.equal(w, expected)
    assert w[1, 5].item() == q[1, 5].item() - 8.0


def test_fp8_and_int8_dequantize_per_channel():
    weight = torch.randn(4, 6).to(torch.float8_e4m3fn)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0])
    assert torch.equal(dequantize(Fp8Weight(weight, scale)), weight.float() * scale[:, None])
    assert torch.equal(dequantize(Fp8Weight(weight, torch.tensor([2.0]))), weight.float() * 2)
    q = torch.randint(-127, 128, (4, 6), dtype=torch.int8)
    assert torch.equal(dequantize(Int8Weight(q, scale)), q.float() * scale[:, None])


def test_bad_layouts_are_clear_errors():
    packed = torch.zeros(4, 8, dtype=torch.uint8)  # K = 16
    with pytest.raises(LlamarunError, match="group size 12"):
        Int4Weight(packed, torch.ones(4, 1), torch.zeros(4, 1), group_size=12)
    with pytest.raises(LlamarunError, match="scales have shape"):
        Int4Weight(packed, torch.ones(4, 3), torch.zeros(4, 2), group_size=8)
    with pytest.raises(LlamarunError, match="uint8"):
        Int4Weight(packed.to(torch.int8), torch.ones(4, 2), torch.zeros(4, 2), group_size=8)
    with pytest.raises(LlamarunError, match="float8_e4m3fn"):
        Fp8Weight(torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(LlamarunError, match="3 entries"):
        Int8Weight(torch.zeros(2, 2, dtype=torch.int8), torch.ones(3))
