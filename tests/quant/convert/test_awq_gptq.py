"""AWQ and GPTQ int4 -> Int4Weight: exactly the documented dequantization; act-order and bad shapes refused."""

from __future__ import annotations

import pytest
import torch
from int4_writers import awq_tensors, gptq_tensors, random_int4, reference_weight

from llamarun.errors import ConfigMismatchError, LlamarunError, UnsupportedError
from llamarun.quant.convert.awq import awq_to_int4
from llamarun.quant.convert.gptq import gptq_dequantize, gptq_to_int4
from llamarun.quant.layouts import dequantize

N, K = 48, 256


@pytest.mark.parametrize("group", [32, 64, 128])
def test_awq_matches_reference(group: int):
    q, zeros, scales = random_int4(N, K, group, seed=group)
    t = awq_tensors(q, zeros, scales)
    conv = awq_to_int4(t["qweight"], t["qzeros"], t["scales"], group)
    assert conv.exact and conv.weight.shape == (N, K) and conv.weight.group_size == group
    assert torch.equal(dequantize(conv.weight), reference_weight(q, zeros, scales, torch.arange(K) // group))


def test_awq_column_order_matters():
    """Packing columns in natural order (not AWQ's) must not dequantize to the same weight."""
    from int4_writers import pack_columns

    q, zeros, scales = random_int4(N, K, 64)
    natural = awq_to_int4(pack_columns(q), pack_columns(zeros), scales, 64)
    assert not torch.equal(dequantize(natural.weight), reference_weight(q, zeros, scales, torch.arange(K) // 64))


@pytest.mark.parametrize("v1", [True, False], ids=["gptq", "gptq_v2"])
def test_gptq_matches_reference(v1: bool):
    q, zeros, scales = random_int4(N, K, 64, seed=3)
    if v1:
        zeros = zeros.clamp(min=1)  # v1 cannot store a zero of 0 (it reads back as 16)
    g_idx = torch.arange(K) // 64
    t = gptq_tensors(q, zeros, scales, g_idx, v1=v1)
    conv = gptq_to_int4(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 64, v1_zeros=v1)
    ref = reference_weight(q, zeros, scales, g_idx)
    assert torch.equal(dequantize(conv.weight), ref)
    assert torch.equal(gptq_dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 64, v1_zeros=v1), ref)


def test_gptq_v1_stored_fifteen_reads_as_sixteen():
    """Old GPTQ stores z - 1; runtimes add 1 back without wrapping, so a stored 0xF is a zero of 16."""
    q, zeros, scales = random_int4(8, 64, 32)
    t = gptq_tensors(q, torch.zeros_like(zeros), scales, torch.arange(64) // 32)  # stores 0xF
    conv = gptq_to_int4(t["qweight"], t["qzeros"], t["scales"], None, 32)
    assert torch.equal(dequantize(conv.weight), reference_weight(q, torch.full_like(zeros, 16), scales,
                                                                 torch.arange(64) // 32))


def test_gptq_act_order_is_refused_but_expands_exactly():
    q, zeros, scales = random_int4(N, K, 64, seed=5)
    g_idx = torch.randperm(K, generator=torch.Generator().manual_seed(0)) // 64  # scattered groups
    t = gptq_tensors(q, zeros.clamp(min=1), scales, g_idx)
    with pytest.raises(UnsupportedError, match="act-order"):
        gptq_to_int4(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 64)
    assert torch.equal(gptq_dequantize(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 64),
                       reference_weight(q, zeros.clamp(min=1), scales, g_idx))


def test_mismatched_scales_and_wrong_group_size_are_clear_errors():
    q, zeros, scales = random_int4(N, K, 64)
    t = awq_tensors(q, zeros, scales)
    with pytest.raises(ConfigMismatchError, match="scales have shape"):
        awq_to_int4(t["qweight"], t["qzeros"], t["scales"][:, :-8], 64)
    with pytest.raises(ConfigMismatchError, match="group_size"):
        awq_to_int4(t["qweight"], t["qzeros"], t["scales"], 128)  # the file's groups are 64
    with pytest.raises(LlamarunError, match="group_size 96 does not divide"):
        gptq_to_int4(gptq_tensors(q, zeros, scales, torch.arange(K) // 64)["qweight"], t["qzeros"], scales,
                     None, 96)
