"""Batch-1 decode against a float8 or int8 weight: one activation row, the weight streamed once from registers.

At one row the tensor cores only add a padded operand and the layout shuffles that feed them; what
matters is how many weight bytes each multiprocessor has in flight. So each program streams BLOCK_N
weight rows in wide tiles along K (several KiB a row per iteration, vector loads), multiplies in
float32 registers and reduces along K at the end of the tile; the per-channel (or per-tensor) float32
scale applies once per output. (4-bit weights have their own integer kernel, `int4_gemv.py`.)

`SILU_INPUT` reads silu(gate) * up from the merged gate/up output (the down projection in one launch).
Launch configurations are fixed (CUDA graphs); `benchmarks/gpu_quant_kernels.py --sweep` measures them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from llamarun.kernels.activation import load_activation


def launch_override(kind: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """A sweep's winner tried end to end without an edit: LLAMARUN_GEMV_FP8=4,1024,4 (printed by the GPU
    kernel benchmarks; spawned tensor-parallel ranks inherit it). Read once, at import."""
    name = f"LLAMARUN_GEMV_{kind.upper()}"
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    parts = value.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        from llamarun.errors import LlamarunError

        raise LlamarunError(f"{name}={value!r} is not a launch configuration",
                            "give BLOCK_N,BLOCK_K,WARPS as three positive integers, e.g. 4,1024,4")
    return tuple(int(p) for p in parts)


# (BLOCK_N, BLOCK_K, num_warps), read at call time so a sweep can vary it; swept on the H200, 2026-11-29.
CONFIG = {"fp8": launch_override("fp8", (4, 1024, 4))}


@triton.jit
def _gemv_scaled_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_wn, PER_CHANNEL: tl.constexpr,
                     SILU_INPUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    for k0 in range(0, K, BLOCK_K):  # K is a multiple of BLOCK_K (checked by the caller)
        w = tl.load(w_rows + (k0 + ks)[None, :], mask=n_mask[:, None], other=0.0).to(tl.float32)  # [BN, BK]
        x = load_activation(x_ptr, k0 + ks, ks < BLOCK_K, K, SILU_INPUT)  # [BK]
        acc += w * x[None, :]
    store_scaled(tl.sum(acc, axis=1), s_ptr, y_ptr, rows, n_mask, PER_CHANNEL)


@triton.jit
def store_scaled(out, s_ptr, y_ptr, rows, n_mask, PER_CHANNEL: tl.constexpr):
    """y[rows] = out [BN] times the per-channel (or per-tensor) float32 scale, in y's dtype."""
    if PER_CHANNEL:
        out *= tl.load(s_ptr + rows, mask=n_mask, other=0.0)
    else:
        out *= tl.load(s_ptr)
    tl.store(y_ptr + rows, out.to(y_ptr.dtype.element_ty), mask=n_mask)


def fit_block_k(k: int, block_k: int, least: int = 1) -> int:
    """The launch's tile width for an input of k: a power of two (Triton's ranges) dividing k, at most block_k
    and at least `least` (a group size that divides k)."""
    block_k = max(min(block_k, 1 << (k.bit_length() - 1)), least)
    while k % block_k:
        block_k //= 2
    return block_k


def _check(x: torch.Tensor, k: int, k_w: int, n: int, silu_input: bool) -> None:
    if x.shape[0] != 1 or x.stride(-1) != 1 or k != k_w:
        raise ValueError(f"gemv: x {tuple(x.shape)} must be one row matching a [{n}, {k_w}] weight"
                         + (" (merged gate/up: twice the width)" if silu_input else ""))


def gemv_scaled(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None,
                silu_input: bool = False) -> torch.Tensor:
    """x [1, K] @ (weight [N, K] float8 or int8 * scale)^T -> [1, N] in x's dtype.

    With `silu_input`, x is the merged gate/up output [1, 2K], read as silu(gate) * up.
    """
    n, k_w = weight.shape
    k = x.shape[1] // 2 if silu_input else x.shape[1]
    _check(x, k, k_w, n, silu_input)
    block_n, block_k, warps = CONFIG["fp8"]
    block_k = fit_block_k(k, block_k)
    y = torch.empty(1, n, dtype=x.dtype, device=x.device) if out is None else out
    _gemv_scaled_kernel[(triton.cdiv(n, block_n),)](x, weight, scale, y, n, k, weight.stride(0),
                                                 PER_CHANNEL=scale.numel() > 1, SILU_INPUT=silu_input,
                                                 BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return y
