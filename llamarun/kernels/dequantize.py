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

from llamarun.quant.layouts import Fp8Weight, Int4Weight

BLOCK_N, BLOCK_K = 16, 256


@triton.jit
def _dequantize_kernel(w_ptr, s_ptr, m_ptr, out_ptr, N, K, stride_wn, stride_sn, stride_on,
                       INT4: tl.constexpr, GROUP: tl.constexpr, PER_CHANNEL: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < N)[:, None] & (cols < K)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    if INT4:
        packed = tl.load(w_ptr + rows64 * stride_wn + (cols // 2)[None, :], mask=mask, other=0)  # [BN, BK] bytes
        q = ((packed >> ((cols % 2) * 4)[None, :]) & 0xF).to(tl.float32)
        groups = (cols // GROUP)[None, :]
        s = tl.load(s_ptr + rows64 * stride_sn + groups, mask=mask, other=0.0).to(tl.float32)
        mn = tl.load(m_ptr + rows64 * stride_sn + groups, mask=mask, other=0.0).to(tl.float32)
        w = q * s + mn
    else:
        w = tl.load(w_ptr + rows64 * stride_wn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if PER_CHANNEL:
            w *= tl.load(s_ptr + rows, mask=rows < N, other=0.0)[:, None]
        else:
            w *= tl.load(s_ptr)
    tl.store(out_ptr + rows64 * stride_on + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_to(w: Int4Weight | Fp8Weight, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] weight in `dtype`, on w's device."""
    n, k = w.shape
    if isinstance(w, Int4Weight):
        packed, scales, mins, group, stride_sn = w.qweight, w.scales, w.mins, w.group_size, w.scales.stride(0)
    else:
        packed, scales, mins, group, stride_sn = w.weight, w.scale.reshape(-1), w.scale, 1, 0
    out = torch.empty(n, k, dtype=dtype, device=packed.device)
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(k, BLOCK_K))
    _dequantize_kernel[grid](packed, scales, mins, out, n, k, packed.stride(0), stride_sn, out.stride(0),
                             INT4=isinstance(w, Int4Weight), GROUP=group, PER_CHANNEL=scales.numel() > 1,
                             BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=4)
    return out
