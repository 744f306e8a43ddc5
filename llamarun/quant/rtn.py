"""Round-to-nearest quantization of float weights onto the shared layouts (online quantization).

No calibration data: each output channel (FP8, INT8) or each group of G inputs of a channel (INT4)
gets its own range. INT4 is asymmetric with an integer zero point, as GPTQ/AWQ and compressed-tensors
store it (`w = (q - zero) * scale`, which our layout writes as `q * scale + min` with
`min = -zero * scale`), so a checkpoint we quantize is also an exact compressed-tensors checkpoint.
"""

from __future__ import annotations

import torch

from llamarun.errors import LlamarunError
from llamarun.quant.layouts import FP8_MAX, Fp8Weight, Int4Weight, Int8Weight, pack_nibbles

INT4_GROUP_SIZES = (128, 64, 32)  # 32 is GGUF's block; online quantization offers 128 and 64
INT8_MAX = 127.0
# Rows quantized at a time: the float32 working copy of a 128k-vocabulary head would otherwise be 2 GB
# (4 GB at 70B), on top of the packed model. Every format's scales are per row, so blocks are independent.
ROW_BLOCK = 4096


def scale_dtype_for(weight: torch.Tensor) -> torch.dtype:
    """INT4 scales stay in a 16-bit compute dtype (what the kernels read); anything else keeps float32."""
    return weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.float32


def quantize_int4(weight: torch.Tensor, group_size: int = 128) -> Int4Weight:
    """Asymmetric 4-bit RTN in groups of `group_size` inputs; the range always includes 0, so the
    integer zero point lies in 0..15 and an all-zero group stays exactly zero."""
    k = weight.shape[1]
    if group_size <= 0 or k % group_size:
        raise LlamarunError(f"int4 group size {group_size} does not divide the input size {k}",
                            f"use --group-size {largest_dividing_group(k)}")
    dtype = scale_dtype_for(weight)
    parts = [_int4_rows(block, group_size, dtype) for block in weight.detach().split(ROW_BLOCK)]
    return Int4Weight(qweight=torch.cat([p[0] for p in parts]), scales=torch.cat([p[1] for p in parts]),
                      mins=torch.cat([p[2] for p in parts]), group_size=group_size)


def _int4_rows(weight: torch.Tensor, group_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    n, k = weight.shape
    w = weight.to(torch.float32, copy=True).reshape(n, k // group_size, group_size)  # [n, groups, G], a copy
    lo = w.amin(dim=-1).clamp(max=0.0)  # [n, groups]
    hi = w.amax(dim=-1).clamp(min=0.0)  # [n, groups]
    # The scale is rounded to its stored dtype first, so q is computed against the scale kernels will use.
    scale = ((hi - lo) / 15.0).clamp(min=torch.finfo(torch.float32).tiny).to(dtype).float()  # [n, groups]
    zero = torch.round(-lo / scale).clamp_(0, 15)  # [n, groups]
    q = torch.round(w.div_(scale[..., None])).add_(zero[..., None])  # [n, groups, G], in place: one copy
    q = q.clamp_(0, 15).to(torch.uint8).reshape(n, k)  # [n, K]
    return pack_nibbles(q), scale.to(dtype), (-zero * scale).to(dtype)


def int4_zero_points(w: Int4Weight) -> torch.Tensor:
    """The integer zero points (0..15) of an RTN-quantized layout: `min = -zero * scale` inverted."""
    zero = torch.round(-w.mins.float() / w.scales.float().clamp(min=torch.finfo(torch.float32).tiny))
    return zero.clamp_(0, 15).to(torch.uint8)  # [N, groups]


def largest_dividing_group(k: int) -> int:
    """The largest supported INT4 group size that divides `k` (0 when none does)."""
    return next((g for g in INT4_GROUP_SIZES if k % g == 0), 0)


def quantize_fp8(weight: torch.Tensor) -> Fp8Weight:
    """float8_e4m3fn with a float32 scale per output channel (the row's largest magnitude maps to 448)."""
    parts = []
    for block in weight.detach().split(ROW_BLOCK):
        w = block.to(torch.float32, copy=True)  # [n, K], a copy: it is divided in place
        scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)  # [n]
        parts.append((w.div_(scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale))
    return Fp8Weight(weight=torch.cat([p[0] for p in parts]), scale=torch.cat([p[1] for p in parts]))


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Symmetric int8 with a float32 scale per output channel."""
    parts = []
    for block in weight.detach().split(ROW_BLOCK):
        w = block.to(torch.float32, copy=True)  # [n, K], a copy: it is divided in place
        scale = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)  # [n]
        parts.append((w.div_(scale[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale))
    return Int8Weight(qweight=torch.cat([p[0] for p in parts]), scale=torch.cat([p[1] for p in parts]))


def quantize_tokens_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token FP8 activations: ([M, K] float8_e4m3fn, [M, 1] float32 scales)."""
    xf = x.float()  # [M, K]
    scale = (xf.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)  # [M, 1]
    return (xf / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_tokens_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token symmetric int8 activations: ([M, K] int8, [M, 1] float32 scales)."""
    xf = x.float()  # [M, K]
    scale = (xf.abs().amax(dim=1, keepdim=True) / INT8_MAX).clamp(min=1e-12)  # [M, 1]
    return torch.round(xf / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale
