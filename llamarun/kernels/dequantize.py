"""Packed weights expanded to bf16/fp16 on the GPU, for prefill matmuls that run on cuBLAS.

With hundreds of rows a matmul is bound by arithmetic, not by the weight bytes, so the fastest way
to multiply by a packed weight is to expand it once per call (one read of the packed bytes, one write
and one read of the expanded ones: about a millisecond for the largest Llama 3.3 70B layer) and hand
it to cuBLAS's tensor-core GEMM. The values equal `quant.layouts.dequantize` (float32 math, then
rounded to the output dtype).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight

BLOCK_N, BLOCK_K = 32, 256


@triton.jit
def _int4_kernel(w_ptr, s_ptr, m_ptr, out_ptr, N, stride_wn, stride_sn, stride_on, GROUP: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """One group of BLOCK_N rows: eight nibbles per int32 word, each 1 + q/16 by bit operations, then one FMA."""
    WORDS: tl.constexpr = GROUP // 8
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    g = tl.program_id(1)
    n_mask = rows < N
    rows64 = rows.to(tl.int64)
    words = tl.load(w_ptr + rows64[:, None] * stride_wn + (g * WORDS + tl.arange(0, WORDS))[None, :],
                    mask=n_mask[:, None], other=0)  # [BN, WORDS] int32
    q = (words[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 0xF  # [BN, WORDS, 8]: k = 8c + i
    v = tl.reshape(((q << 19) | 0x3F800000).to(tl.float32, bitcast=True), [BLOCK_N, GROUP])  # 1 + q/16
    s = tl.load(s_ptr + rows64 * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + rows64 * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
    w = v * (16.0 * s)[:, None] + (m - 16.0 * s)[:, None]  # q s + m
    dst = out_ptr + rows64[:, None] * stride_on + (g * GROUP + tl.arange(0, GROUP))[None, :]
    tl.store(dst, w.to(out_ptr.dtype.element_ty), mask=n_mask[:, None])


@triton.jit
def _scaled_kernel(w_ptr, s_ptr, out_ptr, N, K, stride_wn, stride_on, PER_CHANNEL: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """float8 (or int8) times its channel or tensor scale."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < N)[:, None] & (cols < K)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    w = tl.load(w_ptr + rows64 * stride_wn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if PER_CHANNEL:
        w *= tl.load(s_ptr + rows, mask=rows < N, other=0.0)[:, None]
    else:
        w *= tl.load(s_ptr)
    tl.store(out_ptr + rows64 * stride_on + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_to(w: Int4Weight | Fp8Weight | Int8Weight, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] weight in `dtype`, on w's device."""
    n, k = w.shape
    out = torch.empty(n, k, dtype=dtype, device=w.scales.device if isinstance(w, Int4Weight) else w.scale.device)
    weight = w.qweight if isinstance(w, Int8Weight | Int4Weight) else w.weight
    if isinstance(w, Int4Weight):
        if w.group_size % 8 or w.group_size & (w.group_size - 1):
            raise ValueError(f"dequantize_to: int4 group size {w.group_size} is not a power of two from 8")
        words = w.qweight.view(torch.int32)  # [N, K / 8]
        grid = (triton.cdiv(n, BLOCK_N), k // w.group_size)
        _int4_kernel[grid](words, w.scales, w.mins, out, n, words.stride(0), w.scales.stride(0), out.stride(0),
                           GROUP=w.group_size, BLOCK_N=BLOCK_N, num_warps=4)
        return out
    scale = w.scale.reshape(-1)
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(k, BLOCK_K))
    _scaled_kernel[grid](weight, scale, out, n, k, weight.stride(0), out.stride(0),
                         PER_CHANNEL=scale.numel() > 1, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=4)
    return out
