"""MLX affine quantization -> packed layouts.

MLX stores `w = scales * q + biases` per group of inputs, q packed into uint32 words lowest bits
first. For 4 bits, value j of a word sits at bits 4j..4j+3, so on a little-endian machine the word's
bytes are exactly our nibble order (byte b: value 2b low, 2b+1 high): the words are reinterpreted as
bytes and the scales and biases become our scales and minimums as stored. Exact, no copy of q.
Other widths (2-, 3-, 6-, 8-bit) have no int4 twin; `mlx_other_bits_to_int8` re-quantizes them.
"""

from __future__ import annotations

import sys

import torch

from llamarun.errors import ConfigMismatchError
from llamarun.quant.convert.requantize import int8_per_channel
from llamarun.quant.convert.result import Conversion
from llamarun.quant.layouts import Int4Weight


def mlx_to_int4(packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor, group_size: int) -> Conversion:
    """packed [N, K / 8] uint32 (or int32), scales/biases [N, K / group_size] -> exact Int4Weight."""
    if packed.dim() != 2 or packed.element_size() != 4:
        raise ConfigMismatchError(f"MLX 4-bit weights must be 2-D 32-bit words, got {tuple(packed.shape)} "
                                  f"{packed.dtype}")
    n, words = packed.shape
    k = words * 8
    if tuple(scales.shape) != (n, k // group_size) or k % group_size:
        raise ConfigMismatchError(
            f"MLX tensor of {n}x{k} 4-bit weights has scales {tuple(scales.shape)}, which does not fit "
            f"group_size {group_size} (expected {(n, k // max(group_size, 1))})",
            "check group_size in config.json")
    if tuple(biases.shape) != tuple(scales.shape):
        raise ConfigMismatchError(f"MLX biases {tuple(biases.shape)} differ from scales {tuple(scales.shape)}")
    qweight = packed.contiguous().view(torch.uint8)  # [N, K / 2]
    if sys.byteorder == "big":  # the words' bytes come most significant first: put byte 0 first
        qweight = qweight.view(n, words, 4).flip(-1).reshape(n, -1)
    weight = Int4Weight(qweight, scales, biases.to(scales.dtype), group_size=group_size)
    return Conversion(weight, f"MLX 4-bit g{group_size}")


def mlx_other_bits_to_int8(expanded: torch.Tensor, bits: int, group_size: int) -> Conversion:
    """An MLX weight of another width, already expanded exactly, re-quantized to int8 per channel."""
    packed, error = int8_per_channel(expanded)
    return Conversion(packed, f"MLX {bits}-bit g{group_size}", exact=False, error=error)
