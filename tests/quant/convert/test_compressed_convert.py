"""compressed-tensors -> packed layouts, on tensors written by the compressed-tensors package itself.

The library's own `decompress` is the reference; it computes in the scale's dtype, so ours (exact in
float32) is compared after the same cast.
"""

from __future__ import annotations

import pytest
import torch

from llamarun.errors import ConfigMismatchError, UnsupportedError
from llamarun.quant.convert.compressed import ct_fp8, ct_int8, ct_pack_quantized
from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight, dequantize

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.base import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

N, K = 32, 256


def compress(fmt: str, weight: torch.Tensor, **args):
    """(compressed state dict, library-decompressed weight, scheme) for `weight` under `args`."""
    qargs = QuantizationArgs(**args)
    scheme = QuantizationScheme(targets=["Linear"], weights=qargs)
    w = weight.float()
    if qargs.strategy == "group":
        view = w.view(N, -1, qargs.group_size)
        lo, hi = view.amin(-1), view.amax(-1)
    elif qargs.strategy == "channel":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    else:
        lo, hi = w.amin().reshape(1), w.amax().reshape(1)
    scale, zp = calculate_qparams(lo, hi, qargs)
    state = {"weight": weight, "weight_scale": scale.to(weight.dtype)}
    if not qargs.symmetric:
        state["weight_zero_point"] = zp
    comp = BaseCompressor.load_from_registry(fmt)
    packed = comp.compress(state, scheme)
    return packed, comp.decompress(dict(packed), scheme)["weight"], scheme


def weight(dtype=torch.bfloat16) -> torch.Tensor:
    return (torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.05).to(dtype)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("strategy", ["group", "channel"])
def test_w4a16_pack_quantized(symmetric: bool, strategy: str):
    group = 64 if strategy == "group" else None
    sd, ref, _ = compress("pack-quantized", weight(), num_bits=4, type="int", symmetric=symmetric,
                          strategy=strategy, group_size=group)
    conv = ct_pack_quantized(sd["weight_packed"], sd["weight_scale"], sd["weight_shape"], 4, group,
                             sd.get("weight_zero_point"))
    assert conv.exact and isinstance(conv.weight, Int4Weight) and conv.weight.group_size == (group or K)
    assert torch.equal(dequantize(conv.weight, ref.dtype), ref)


def test_w8a16_pack_quantized_per_channel_is_int8():
    sd, ref, _ = compress("pack-quantized", weight(), num_bits=8, type="int", symmetric=True, strategy="channel")
    conv = ct_pack_quantized(sd["weight_packed"], sd["weight_scale"], sd["weight_shape"], 8)
    assert conv.exact and isinstance(conv.weight, Int8Weight)
    assert torch.equal(dequantize(conv.weight, ref.dtype), ref)


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_fp8(strategy: str):
    sd, ref, _ = compress("float-quantized", weight(), num_bits=8, type="float", symmetric=True, strategy=strategy)
    conv = ct_fp8(sd["weight"], sd["weight_scale"])
    assert isinstance(conv.weight, Fp8Weight) and conv.weight.scale.numel() == (N if strategy == "channel" else 1)
    assert torch.equal(dequantize(conv.weight, ref.dtype), ref)


def test_int8():
    sd, ref, _ = compress("int-quantized", weight(), num_bits=8, type="int", symmetric=True, strategy="channel")
    conv = ct_int8(sd["weight"], sd["weight_scale"])
    assert isinstance(conv.weight, Int8Weight)
    assert torch.equal(dequantize(conv.weight, ref.dtype), ref)


def test_bad_compressed_tensors_are_clear_errors():
    sd, _, _ = compress("pack-quantized", weight(), num_bits=4, type="int", symmetric=True, strategy="group",
                        group_size=64)
    with pytest.raises(ConfigMismatchError, match="group_size 128"):
        ct_pack_quantized(sd["weight_packed"], sd["weight_scale"], sd["weight_shape"], 4, 128)
    with pytest.raises(ConfigMismatchError, match="does not hold"):
        ct_pack_quantized(sd["weight_packed"][:, :-1], sd["weight_scale"], sd["weight_shape"], 4, 64)
    with pytest.raises(UnsupportedError, match="per-channel"):
        ct_fp8(torch.zeros(N, K, dtype=torch.float8_e4m3fn), torch.ones(N // 8, K // 128))  # block scales
