"""GGUF blocks -> packed layouts.

Q4_0, Q4_1 and Q4_K become `Int4Weight` in groups of 32 with no rounding at all:
- Q4_0 `w = d * (q - 8)`: scales = d, mins = -8 * d (a power-of-two multiple, exact in float16);
- Q4_1 `w = d * q + m`: scales = d, mins = m (the file's float16 values as they are);
- Q4_K `w = (d * sc) * q - (dmin * m)` per 32-weight sub-block: scales = d * sc, mins = -(dmin * m),
  in float32, where those products of a float16 and a 6-bit integer are exact.
Every other block type (Q8_0 with its scale per 32 weights, Q5_*, Q2/3/5/6_K) has no exact twin: it is
expanded exactly, then re-quantized to int8 per channel with the smallest error (`requantize.py`),
and the error is reported. Float types (F32/F16/BF16) are not converted: they stay float.
"""

from __future__ import annotations

import torch

from llamarun.errors import CheckpointError
from llamarun.loaders.gguf.dequant import dequantize
from llamarun.loaders.gguf.dequant_kquants import _scale_min_k4  # the 6-bit scale unpacking, shared
from llamarun.loaders.gguf.dequant_legacy import half_at, split_nibbles
from llamarun.loaders.gguf.ggml_types import BLOCK_GEOMETRY, GGMLType, type_name
from llamarun.quant.convert.requantize import int8_per_channel
from llamarun.quant.convert.result import Conversion
from llamarun.quant.layouts import Int4Weight, pack_nibbles

FLOAT_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})
EXACT_INT4_TYPES = frozenset({GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K})
_FP16_MAX = 65504.0


def gguf_to_packed(raw: torch.Tensor, ggml_type: int, shape: tuple[int, ...]) -> Conversion | None:
    """A 2-D GGUF weight's bytes (1-D uint8) -> its packed form; None for float types (kept float)."""
    gtype = GGMLType(ggml_type)
    if gtype in FLOAT_TYPES:
        return None
    if len(shape) != 2:
        raise CheckpointError(f"a packed weight must be 2-D, this {gtype.name} tensor has shape {tuple(shape)}")
    if gtype not in EXACT_INT4_TYPES:
        packed, error = int8_per_channel(dequantize(raw, ggml_type, shape))
        return Conversion(packed, type_name(ggml_type), exact=False, error=error)
    n, k = shape
    block, type_size = BLOCK_GEOMETRY[gtype]
    if k % block or raw.numel() != n * k // block * type_size:
        raise CheckpointError(f"a {gtype.name} tensor of shape {tuple(shape)} cannot have {raw.numel()} bytes",
                              "the file is corrupt or its tensor directory does not match its data")
    blocks = raw.view(-1, type_size)  # [n * k / block, type_size]
    convert = {GGMLType.Q4_0: _q4_0, GGMLType.Q4_1: _q4_1, GGMLType.Q4_K: _q4_k}[gtype]
    q, scales, mins = convert(blocks)  # [blocks, block] 0..15; [blocks, block // 32] twice
    weight = Int4Weight(pack_nibbles(q.reshape(n, k)), scales.reshape(n, k // 32), mins.reshape(n, k // 32),
                        group_size=32)
    return Conversion(weight, gtype.name)


def _q4_0(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = blocks[:, 0:2].contiguous().view(torch.float16)  # [b, 1]
    q = split_nibbles(blocks[:, 2:])  # [b, 32] unsigned 0..15
    if d.numel() and d.float().abs().max().item() * 8 > _FP16_MAX:
        d = d.float()  # -8 * d would overflow float16: keep both in float32 (still exact)
    return q, d, d * -8


def _q4_1(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = blocks[:, 0:2].contiguous().view(torch.float16)  # [b, 1]
    m = blocks[:, 2:4].contiguous().view(torch.float16)  # [b, 1]
    return split_nibbles(blocks[:, 4:]), d, m


def _q4_k(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = blocks.shape[0]
    d, dmin = half_at(blocks, 0), half_at(blocks, 2)  # [b, 1] float32
    sc, mn = _scale_min_k4(blocks[:, 4:16])  # [b, 8] six-bit integers
    q = split_nibbles(blocks[:, 16:].unflatten(-1, (4, 32)))  # [b, 4, 64]: pairs of sub-blocks
    # the same float32 products the reference forms, so q * scale + min rounds exactly as it does
    return q.reshape(n, 256), d * sc, -(dmin * mn)
