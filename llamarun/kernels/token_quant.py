"""Dynamic per-token FP8 activations in one kernel: a row's largest magnitude, then the row scaled and cast.

Why: the same thing in torch ops (`quant.rtn.quantize_tokens_fp8`: float copy, abs, amax, divide, clamp,
cast) makes five passes and two float32 copies of the activations. Before every W8A8 GEMM of a long
prefill that traffic was about as large as the GEMM's own reads, and FP8 serving throughput fell below
bf16's. Here a row of up to `ROW_IN_REGISTERS` elements is read once and held while its maximum is found;
a longer row is read twice (the second time mostly from the L2). Either way it is written once, in FP8.

With `silu_input` the kernel reads the merged gate/up projection [M, 2K] and quantizes silu(gate) * up,
rounded as `activation.silu_and_mul` rounds it, so FP8's down projection needs no separate SwiGLU kernel
and no [M, K] intermediate in memory: on an H200's 256-concurrent 8B bench those two were 14% of FP8's
GPU time.

The arithmetic is the torch version's: scale = max(|x|) / 448 (at least 1e-12), x / scale rounded to the
nearest FP8 value (an IEEE division, so ties round as torch rounds them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llamarun.kernels.activation import load_activation
from llamarun.quant.layouts import FP8_MAX

BLOCK = 1024  # elements a step when a row is read twice
ROW_IN_REGISTERS = 16384  # rows up to this many elements (8B's 14336-wide down input too) are read once


@triton.jit
def _quantize_row_once_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, FP8_LIMIT: tl.constexpr,
                              ROW: tl.constexpr, SILU_INPUT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, ROW)
    mask = cols < K
    x = load_activation(x_ptr + row * stride_x, cols, mask, K, SILU_INPUT)  # [ROW] float32
    scale = tl.maximum(tl.max(tl.abs(x), axis=0) / FP8_LIMIT, 1e-12)
    tl.store(s_ptr + row, scale)
    y = tl.minimum(tl.maximum(tl.div_rn(x, scale), -FP8_LIMIT), FP8_LIMIT)
    tl.store(q_ptr + row * stride_q + cols, y.to(tl.float8e4nv), mask=mask)


@triton.jit
def _quantize_row_twice_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, FP8_LIMIT: tl.constexpr,
                               BLOCK: tl.constexpr, SILU_INPUT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, K, BLOCK):
        x = load_activation(x_ptr + row * stride_x, k0 + cols, k0 + cols < K, K, SILU_INPUT)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.maximum(tl.max(amax, axis=0) / FP8_LIMIT, 1e-12)
    tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        mask = k0 + cols < K
        x = load_activation(x_ptr + row * stride_x, k0 + cols, mask, K, SILU_INPUT)
        y = tl.minimum(tl.maximum(tl.div_rn(x, scale), -FP8_LIMIT), FP8_LIMIT)
        tl.store(q_ptr + row * stride_q + k0 + cols, y.to(tl.float8e4nv), mask=mask)


def quantize_rows_fp8(x: torch.Tensor, silu_input: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> ([M, K] float8_e4m3fn, [M, 1] float32 scales), as `quant.rtn.quantize_tokens_fp8`.

    `silu_input`: x is the merged gate/up output [M, 2K], and silu(gate) * up is what gets quantized.
    """
    if x.dim() != 2 or x.stride(1) != 1 or (silu_input and x.shape[1] % 2):
        what = "[M, 2K] gate/up" if silu_input else "[M, K]"
        raise ValueError(f"quantize_rows_fp8 takes {what} with contiguous rows, not {tuple(x.shape)}")
    m, k = x.shape[0], x.shape[1] // 2 if silu_input else x.shape[1]
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if not m:
        return q, scales
    row = triton.next_power_of_2(k)
    if row <= ROW_IN_REGISTERS:
        _quantize_row_once_kernel[(m,)](x, q, scales, k, x.stride(0), q.stride(0), FP8_LIMIT=FP8_MAX, ROW=row,
                                        SILU_INPUT=silu_input, num_warps=max(4, min(16, row // 1024)))
    else:
        _quantize_row_twice_kernel[(m,)](x, q, scales, k, x.stride(0), q.stride(0), FP8_LIMIT=FP8_MAX,
                                         BLOCK=BLOCK, SILU_INPUT=silu_input, num_warps=4)
    return q, scales
