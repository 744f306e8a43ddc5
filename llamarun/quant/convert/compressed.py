"""compressed-tensors (vLLM / llm-compressor checkpoints) -> packed layouts.

- "float-quantized" FP8: `weight` float8_e4m3fn [N, K] and `weight_scale` ([N, 1] per channel, or one
  value per tensor): the same numbers as our `Fp8Weight`, exactly. A static `input_scale` is not
  kept: our FP8 path scales activations per token, dynamically.
- "int-quantized" INT8: `weight` int8 [N, K] and a symmetric `weight_scale` -> `Int8Weight`, exactly.
- "pack-quantized" (W4A16, W8A16): `weight_packed` int32 [N, ceil(K * bits / 32)], value k at bit
  k * bits of the row's bit stream, stored as q + 2^(bits-1) (unsigned); `weight_scale` [N, K / G]
  ([N, 1] per channel); `weight_zero_point` for asymmetric schemes, signed, packed the same way along
  N ([ceil(N * bits / 32), K / G]); `weight_shape` = (N, K). `w = (q - zp) * scale`.
  4 bits -> `Int4Weight` exactly: the int32 words' bytes are our nibble order, scales = scale and
  mins = -(zp + 8) * scale in float32 (exact). 8 bits per channel, symmetric -> `Int8Weight` exactly;
  8-bit groups or zero points are re-quantized to int8 per channel.
"""

from __future__ import annotations

import sys

import torch

from llamarun.errors import ConfigMismatchError, UnsupportedError
from llamarun.quant.convert.requantize import int8_per_channel
from llamarun.quant.convert.result import Conversion
from llamarun.quant.convert.words import unpack_int32_nibbles
from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight


def ct_fp8(weight: torch.Tensor, weight_scale: torch.Tensor) -> Conversion:
    """FP8 weight with a per-channel or per-tensor scale -> Fp8Weight."""
    n = weight.shape[0]
    if weight.dtype != torch.float8_e4m3fn:
        raise UnsupportedError(f"compressed-tensors FP8 weight is {weight.dtype}; only float8_e4m3fn is supported")
    scale = _channel_scale("FP8", weight_scale, n)
    per = "tensor" if scale.numel() == 1 else "channel"
    return Conversion(Fp8Weight(weight, scale), f"compressed-tensors FP8 per {per}")


def ct_int8(weight: torch.Tensor, weight_scale: torch.Tensor,
            weight_zero_point: torch.Tensor | None = None) -> Conversion:
    """Symmetric INT8 weight with a per-channel or per-tensor scale -> Int8Weight."""
    n = weight.shape[0]
    if weight.dtype != torch.int8:
        raise UnsupportedError(f"compressed-tensors int-quantized weight is {weight.dtype}, expected int8")
    if weight_zero_point is not None and bool(weight_zero_point.ne(0).any()):
        raise UnsupportedError("asymmetric (zero-point) INT8 weights are not supported",
                               "use a symmetric INT8 checkpoint, or FP8 / W4A16")
    scale = _channel_scale("INT8", weight_scale, n).expand(n).contiguous()
    return Conversion(Int8Weight(weight, scale), "compressed-tensors INT8 per channel")


def ct_pack_quantized(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_shape: torch.Tensor,
                      num_bits: int, group_size: int | None = None,
                      weight_zero_point: torch.Tensor | None = None) -> Conversion:
    """`weight_packed` int4 / int8 (per group or per channel, with optional zero points) -> packed layout.

    `group_size` is the config's; a scale shape that implies another group size is an error.
    """
    n, k = (int(x) for x in weight_shape.tolist())
    if num_bits not in (4, 8):
        raise UnsupportedError(f"compressed-tensors pack-quantized {num_bits}-bit weights are not supported",
                               "supported: 4 and 8 bits")
    if weight_packed.dtype != torch.int32 or tuple(weight_packed.shape) != (n, -(-k * num_bits // 32)):
        raise ConfigMismatchError(f"weight_packed {tuple(weight_packed.shape)} {weight_packed.dtype} does not "
                                  f"hold a {n}x{k} {num_bits}-bit weight")
    scale = weight_scale.float().reshape(n, -1) if weight_scale.numel() != 1 else \
        weight_scale.float().reshape(1, 1).expand(n, 1)  # [N, groups]
    groups = scale.shape[1]
    if k % groups or (group_size and groups != 1 and k // groups != group_size):
        raise ConfigMismatchError(
            f"weight_scale {tuple(weight_scale.shape)} implies groups of {k // groups if k % groups == 0 else '?'} "
            f"for a {n}x{k} weight, but the config says group_size {group_size}",
            "check config.json's quantization_config")
    unsigned_zero = _unpack_zero_points(weight_zero_point, num_bits, n, groups)  # [N, groups] zp + 2^(bits-1)
    data = _bytes(weight_packed)  # [N, words * 4] uint8
    source = f"compressed-tensors W{num_bits}A16 " + (f"g{k // groups}" if groups > 1 else "per channel")
    if num_bits == 4:
        mins = -unsigned_zero * scale  # -(zp + 8) * scale, exact in float32
        return Conversion(Int4Weight(data[:, : k // 2].contiguous(), scale.contiguous(), mins.contiguous(),
                                     group_size=k // groups), source)
    q = (data[:, :k].to(torch.int16) - 128)  # [N, K] signed
    if groups == 1 and weight_zero_point is None:
        return Conversion(Int8Weight(q.to(torch.int8), scale.reshape(n).contiguous()), source)
    expanded = (q.float().view(n, groups, -1) - (unsigned_zero - 128)[..., None]) * scale[..., None]
    packed, error = int8_per_channel(expanded.reshape(n, k))
    return Conversion(packed, source, exact=False, error=error)


def _channel_scale(fmt: str, weight_scale: torch.Tensor, n: int) -> torch.Tensor:
    """[N] or [1] float32 from a scale stored as [N, 1], [N], [1] or a scalar."""
    scale = weight_scale.float().reshape(-1)
    if scale.numel() not in (1, n):
        raise UnsupportedError(
            f"compressed-tensors {fmt} weight_scale has shape {tuple(weight_scale.shape)}; only per-channel "
            f"([{n}, 1]) and per-tensor scales are supported (not group or block scales)")
    return scale.contiguous()


def _bytes(words: torch.Tensor) -> torch.Tensor:
    """int32 words -> their bytes in stream order (least significant first), [R, W * 4] uint8."""
    data = words.contiguous().view(torch.uint8)
    if sys.byteorder == "big":
        data = data.view(words.shape[0], -1, 4).flip(-1).reshape(words.shape[0], -1)
    return data


def _unpack_zero_points(packed: torch.Tensor | None, num_bits: int, n: int, groups: int) -> torch.Tensor:
    """Zero points plus 2^(bits-1) (i.e. as stored, unsigned), [N, groups] float32; symmetric -> the offset."""
    offset = float(1 << (num_bits - 1))
    if packed is None:
        return torch.full((n, groups), offset)
    if packed.dtype != torch.int32:  # an unpacked int8 zero point (older files): shift it the same way
        return packed.float().reshape(n, groups) + offset
    words = packed.t().contiguous()  # [groups, words along N]
    along_n = unpack_int32_nibbles(words) if num_bits == 4 else _bytes(words)  # [groups, >= N]
    if along_n.shape[0] != groups or along_n.shape[1] < n:
        raise ConfigMismatchError(f"weight_zero_point {tuple(packed.shape)} does not fit {n} rows x {groups} groups")
    return along_n[:, :n].t().float().contiguous()
