"""Batch-1 decode against a packed weight: one activation row, the weight streamed once from registers.

At one row the tensor cores only add a padded operand and the layout shuffles that feed them; what
matters is how many weight bytes each multiprocessor has in flight. So each program streams BLOCK_N
weight rows in wide tiles along K (several KiB a row per iteration, vector loads), multiplies in
float32 registers and reduces along K at the end of the tile.

- float8 or int8 (`gemv_scaled`): per-channel (or per-tensor) float32 scale applied once per output.
- int4 (`gemv_int4`): the nibbles are read as int32 words of eight (k = 8c + i at bits 4i); each of the
  eight positions becomes the float 1 + q/16 by a shift and a mask (no int-to-float conversion, which
  runs at a quarter of the FMA rate) and meets the activations at stride 8, so no tile is reshaped
  for unpacking. A group's scale and minimum factor out:
  `sum_k (q s + m) x = s (q . x) + m sum_k x`, applied per group after the products are summed.

`SILU_INPUT` reads silu(gate) * up from the merged gate/up output (the down projection in one launch).
Launch configurations are fixed (CUDA graphs); `benchmarks/gpu_quant_kernels.py --sweep` measures them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from llamarun.kernels.activation import load_activation

# (BLOCK_N, BLOCK_K, num_warps) per kind, read at call time so a sweep can vary them.
CONFIG = {"fp8": (4, 1024, 4), "int4": (8, 4096, 4)}  # swept on the H200, 2026-11-29
# A sweep's winner can be tried end to end without an edit: LLAMARUN_GEMV_FP8=4,1024,4 (printed by
# benchmarks/gpu_quant_kernels.py --sweep; spawned tensor-parallel ranks inherit it).
for _kind in CONFIG:
    _name = f"LLAMARUN_GEMV_{_kind.upper()}"
    _value = os.environ.get(_name, "").strip()
    if _value:
        _parts = _value.split(",")
        if len(_parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in _parts):
            from llamarun.errors import LlamarunError

            raise LlamarunError(f"{_name}={_value!r} is not a launch configuration",
                                "give BLOCK_N,BLOCK_K,WARPS as three positive integers, e.g. 4,1024,4")
        CONFIG[_kind] = tuple(int(p) for p in _parts)


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
    out = tl.sum(acc, axis=1)  # [BN]
    if PER_CHANNEL:
        out *= tl.load(s_ptr + rows, mask=n_mask, other=0.0)
    else:
        out *= tl.load(s_ptr)
    tl.store(y_ptr + rows, out.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemv_int4_kernel(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, N, K, stride_wn, stride_sn, GROUP: tl.constexpr,
                      SILU_INPUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    WORDS: tl.constexpr = BLOCK_K // 8
    GROUP_WORDS: tl.constexpr = GROUP // 8
    NG: tl.constexpr = BLOCK_K // GROUP
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    cs = tl.arange(0, WORDS)
    acc = tl.zeros([BLOCK_N], tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    for k0 in range(0, K, BLOCK_K):
        words = tl.load(w_rows + (k0 // 8 + cs)[None, :], mask=n_mask[:, None], other=0)  # [BN, WORDS] int32
        vx = tl.zeros([BLOCK_N, WORDS], tl.float32)
        xs = tl.zeros([WORDS], tl.float32)
        for i in tl.static_range(8):
            x = load_activation(x_ptr, k0 + 8 * cs + i, cs < WORDS, K, SILU_INPUT)  # [WORDS]
            # Nibble i into the top mantissa bits of 1.0: the float 1 + q / 16, exactly, in a shift and a
            # mask (an int-to-float conversion runs at a quarter of the FMA rate and was the bottleneck).
            if i <= 4:  # noqa: SIM108 - a constexpr branch: each unrolled position shifts one way
                bits = (words << (19 - 4 * i)) & 0x780000
            else:
                bits = (words >> (4 * i - 19)) & 0x780000
            v = (bits | 0x3F800000).to(tl.float32, bitcast=True)  # [BN, WORDS] 1 + q / 16
            vx += v * x[None, :]
            xs += x
        # sum (1 + q/16) x = sum x + (q . x) / 16, so q . x = 16 (vx - sum x), per group.
        per_group = tl.sum(tl.reshape(vx, [BLOCK_N, NG, GROUP_WORDS]), axis=2)  # [BN, NG]
        x_group = tl.sum(tl.reshape(xs, [NG, GROUP_WORDS]), axis=1)  # [NG]
        g = k0 // GROUP + tl.arange(0, NG)
        s = tl.load(s_ptr + rows[:, None] * stride_sn + g[None, :], mask=n_mask[:, None], other=0.0).to(tl.float32)
        m = tl.load(m_ptr + rows[:, None] * stride_sn + g[None, :], mask=n_mask[:, None], other=0.0).to(tl.float32)
        acc += tl.sum(16.0 * s * (per_group - x_group[None, :]) + m * x_group[None, :], axis=1)
    tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


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
    block_k = min(block_k, 1 << (k.bit_length() - 1))  # a power of two (Triton's ranges) dividing K
    while k % block_k:
        block_k //= 2
    y = torch.empty(1, n, dtype=x.dtype, device=x.device) if out is None else out
    _gemv_scaled_kernel[(triton.cdiv(n, block_n),)](x, weight, scale, y, n, k, weight.stride(0),
                                                 PER_CHANNEL=scale.numel() > 1, SILU_INPUT=silu_input,
                                                 BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return y


def gemv_int4(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
              out: torch.Tensor | None = None, silu_input: bool = False) -> torch.Tensor:
    """x [1, K] @ dequantize(Int4Weight)^T -> [1, N] in x's dtype; group sizes from 32, powers of two."""
    n, k_w = qweight.shape[0], qweight.shape[1] * 2
    k = x.shape[1] // 2 if silu_input else x.shape[1]
    _check(x, k, k_w, n, silu_input)
    block_n, block_k, warps = CONFIG["int4"]
    block_k = max(min(block_k, 1 << (k.bit_length() - 1)), group_size)
    while k % block_k:
        block_k //= 2
    if block_k < group_size or group_size < 32 or group_size & (group_size - 1):
        raise ValueError(f"gemv_int4: group size {group_size} does not tile an input of {k}")
    y = torch.empty(1, n, dtype=x.dtype, device=x.device) if out is None else out
    words = qweight.view(torch.int32)  # [N, K / 8]
    _gemv_int4_kernel[(triton.cdiv(n, block_n),)](x, words, scales, mins, y, n, k, words.stride(0), scales.stride(0),
                                                  GROUP=group_size, SILU_INPUT=silu_input, BLOCK_N=block_n,
                                                  BLOCK_K=block_k, num_warps=warps)
    return y
