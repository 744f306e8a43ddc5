"""MLX affine quantization: our unpacking equals MLX's own `mx.dequantize`, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llamarun.errors import ConfigMismatchError, UnsupportedError
from llamarun.loaders.mlx import _layer_settings, dequantize_mlx

mx = pytest.importorskip("mlx.core")


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_matches_mlx_dequantize(bits, group_size):
    w = mx.random.normal((48, 256), key=mx.random.key(bits * 1000 + group_size)).astype(mx.float16)
    packed, scales, biases = mx.quantize(w, group_size=group_size, bits=bits)
    # MLX dequantizes in the scales' dtype (fp16 here); in float32 its math is exact and comparable.
    expected = np.array(mx.dequantize(packed, scales.astype(mx.float32), biases.astype(mx.float32),
                                      group_size=group_size, bits=bits))
    got = dequantize_mlx(torch.from_numpy(np.array(packed)), torch.from_numpy(np.array(scales)),
                         torch.from_numpy(np.array(biases)), bits, group_size, torch.float32)
    assert got.shape == (48, 256)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def test_wrong_group_size_is_reported():
    w = mx.random.normal((8, 128), key=mx.random.key(0))
    packed, scales, biases = mx.quantize(w, group_size=64, bits=4)
    with pytest.raises(ConfigMismatchError, match="group_size"):
        dequantize_mlx(torch.from_numpy(np.array(packed)), torch.from_numpy(np.array(scales)),
                       torch.from_numpy(np.array(biases)), 4, 32, torch.float32)


def test_per_layer_overrides_and_unsupported_bits():
    quant = {"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8}}
    assert _layer_settings(quant, "model.layers.0.mlp.down_proj") == (8, 32)
    assert _layer_settings(quant, "model.layers.1.mlp.down_proj") == (4, 64)
    with pytest.raises(UnsupportedError, match="3-bit"):
        _layer_settings({"group_size": 64, "bits": 3}, "x")
