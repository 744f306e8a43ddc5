"""MLX affine 4-bit -> Int4Weight: exactly MLX's own dequantization, with no copy of the packed words."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llamarun.errors import ConfigMismatchError
from llamarun.loaders.mlx import dequantize_mlx
from llamarun.quant.convert.mlx import mlx_to_int4
from llamarun.quant.layouts import dequantize

mx = pytest.importorskip("mlx.core")


@pytest.mark.parametrize("group", [32, 64, 128])
def test_mlx_quantize_output_converts_exactly(group: int):
    w = mx.array(np.random.default_rng(group).standard_normal((24, 256)).astype(np.float32))
    wq, scales, biases = mx.quantize(w, group_size=group, bits=4)
    ref = torch.from_numpy(np.array(mx.dequantize(wq, scales, biases, group_size=group, bits=4)))
    packed = torch.from_numpy(np.array(wq).view(np.int32))
    s, b = torch.from_numpy(np.array(scales)), torch.from_numpy(np.array(biases))
    conv = mlx_to_int4(packed, s, b, group)
    assert conv.exact and conv.weight.group_size == group and conv.weight.shape == (24, 256)
    ours = dequantize(conv.weight)
    assert torch.equal(ours, dequantize_mlx(packed, s, b, 4, group, torch.float32))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)  # MLX may fuse the multiply-add


def test_mlx_half_scales_stay_half():
    w = mx.array(np.random.default_rng(0).standard_normal((8, 64)).astype(np.float16))
    wq, scales, biases = mx.quantize(w, group_size=32, bits=4)
    s = torch.from_numpy(np.array(scales))
    conv = mlx_to_int4(torch.from_numpy(np.array(wq).view(np.int32)), s, torch.from_numpy(np.array(biases)), 32)
    assert conv.weight.scales.dtype == torch.float16
    ref = torch.from_numpy(np.array(mx.dequantize(wq, scales, biases, group_size=32, bits=4)).astype(np.float32))
    torch.testing.assert_close(dequantize(conv.weight, torch.float16).float(), ref, rtol=0, atol=2e-3)


def test_mlx_wrong_group_size_is_a_clear_error():
    packed = torch.zeros(4, 8, dtype=torch.int32)  # K = 64
    with pytest.raises(ConfigMismatchError, match="group_size 64"):
        mlx_to_int4(packed, torch.ones(4, 2), torch.zeros(4, 2), 64)  # the file has groups of 32
