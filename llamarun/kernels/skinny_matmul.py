"""A few activation rows (decode, up to 16) against a packed weight, on the tensor cores with operands swapped.

y^T [N, M] = W [N, K] @ x^T [K, M]: the weight is the dot's left operand, read along K exactly as it
lies in memory (rows contiguous in K), and the handful of activation rows is the right operand,
padded to 16 columns. The padding costs tensor-core work nobody waits for (the step is bound by the
weight bytes), and in exchange Triton software-pipelines the weight loads that feed a dot, which a
register GEMV does not get: that is what brings a packed GEMV near the copy bandwidth.

Weights, by `KIND`:
- 0, float8 (or any float) [N, K] with a per-channel or per-tensor float32 scale, applied per output;
- 1, int4 `Int4Weight`, read as int16 (bf16 activations) or int32 words of nibbles (k = 4c + i or 8c + i at
  bits 4i, little-endian); each nibble becomes 1 + q/16 by bit operations, and the group's scale and minimum
  factor out of the dot: sum_k (q s + m) x = s (q . x) + m sum_k x, with q . x = 16 (v . x - sum_k x).

With `SILU_INPUT` the activations are silu(gate) * up read from the merged gate/up output (the MLP's
down projection in one launch).

Split K: a weight of few output rows gives few programs (70B's o projection: 8192 / 64 = 128, one per
multiprocessor), and one program streams too few bytes at a time to hide the memory's latency: the kernel read
12-22% of an H200's bandwidth at 5-16 rows (benchmarks/results/gpu-int4-libraries-h200-2026-11-30.md). So the
input is cut into `splits` ranges of whole tiles, chosen from the shapes so that about SPLIT_TARGET programs per
multiprocessor run; each range writes float32 partial sums and a small kernel adds them into the output.

Launch configurations are fixed per kind (captured in CUDA graphs, so no autotuning);
`benchmarks/gpu_quant_kernels.py --sweep` measures the alternatives.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llamarun.kernels.activation import load_activation
from llamarun.kernels.decode_attention import sm_count

MAX_ROWS = 16  # one padded dot column block
SPLIT_TARGET = 4  # programs per multiprocessor that the K split aims for
MIN_SPLIT_TILES = 4  # a split range covers at least this many tiles (fewer: the partials cost more than they win)
# (BLOCK_N, BLOCK_K, num_warps, num_stages) per weight kind, read at call time so a sweep can vary them.
CONFIG = {"fp8": (64, 128, 4, 4), "int4": (64, 128, 4, 3)}  # swept on the H200, 2026-11-29
SPLIT_K = True  # False: one program per BLOCK_N rows over the whole input (benchmarks measure the split)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, s_ptr, m_ptr, y_ptr, M, N, K, k_per_split, stride_xm, stride_wn, stride_sn,
                   stride_ym, KIND: tl.constexpr, GROUP: tl.constexpr, PER_CHANNEL: tl.constexpr,
                   SILU_INPUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   BF16_BITS: tl.constexpr, SPLIT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] output channels
    k_start = tl.program_id(1) * k_per_split  # this program's range of the input (all of it without a split)
    n_mask = rows < N
    ms = tl.arange(0, BLOCK_M)
    m_mask = ms < M
    ks = tl.arange(0, BLOCK_K)
    DOT: tl.constexpr = x_ptr.dtype.element_ty  # the activations' dtype: bf16/fp16 (float32 in the interpreter)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    for k0 in range(k_start, k_start + k_per_split, BLOCK_K):
        xt = load_activation(x_ptr, ms[None, :] * stride_xm + (k0 + ks)[:, None], m_mask[None, :], K,
                             SILU_INPUT)  # [BK, BM] float32
        if KIND == 0:
            w = tl.load(w_rows + (k0 + ks)[None, :], mask=n_mask[:, None], other=0.0)  # [BN, BK]
            acc = tl.dot(w.to(DOT), xt.to(DOT), acc)
        else:
            if BF16_BITS:
                # Four nibbles per int16; each becomes the bf16 1 + q/16 by a shift and a mask, reinterpreted:
                # no int-to-float conversion (a quarter-rate instruction that bounded this loop).
                halves = tl.load(w_rows + (k0 // 4 + tl.arange(0, BLOCK_K // 4))[None, :], mask=n_mask[:, None],
                                 other=0)  # [BN, BK / 4] int16
                shifts = (tl.arange(0, 4) * 4).to(tl.int16)
                bits = (((halves[:, :, None] >> shifts[None, None, :]) & 0xF) << 3) | 0x3F80  # [BN, BK / 4, 4]
                v = tl.reshape(bits.to(tl.bfloat16, bitcast=True), [BLOCK_N, BLOCK_K])
            else:  # float32 (the interpreter) or float16: the same 1 + q/16, built as float32
                words = tl.load(w_rows + (k0 // 8 + tl.arange(0, BLOCK_K // 8))[None, :], mask=n_mask[:, None],
                                other=0)  # [BN, BK / 8] int32
                shifts = tl.arange(0, 8) * 4
                q = (words[:, :, None] >> shifts[None, None, :]) & 0xF  # [BN, BK / 8, 8]
                v = tl.reshape(((q << 19) | 0x3F800000).to(tl.float32, bitcast=True), [BLOCK_N, BLOCK_K]).to(DOT)
            xq = xt.to(DOT)
            part = tl.dot(v, xq)  # [BN, BM] sum_k (1 + q/16) x within this group
            g = k0 // GROUP
            s = tl.load(s_ptr + rows * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
            mn = tl.load(m_ptr + rows * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
            xsum = tl.sum(xq.to(tl.float32), axis=0)  # [BM]
            # q . x = 16 (part - sum x); the group's value is s (q . x) + m sum x.
            acc += 16.0 * s[:, None] * (part - xsum[None, :]) + mn[:, None] * xsum[None, :]
    if KIND == 0:
        if PER_CHANNEL:
            acc *= tl.load(s_ptr + rows, mask=n_mask, other=0.0)[:, None]
        else:
            acc *= tl.load(s_ptr)
    if SPLIT:  # float32 partials [splits, M, N]; _add_splits_kernel writes the output
        dst = y_ptr + tl.program_id(1) * M * N + ms[None, :] * N + rows[:, None]
    else:
        dst = y_ptr + ms[None, :] * stride_ym + rows[:, None]
    tl.store(dst, acc.to(y_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


@triton.jit
def _add_splits_kernel(part_ptr, y_ptr, M, N, splits, stride_ym, BLOCK: tl.constexpr):
    """y[m, n] = sum over splits of the partials [splits, M, N] float32, rounded once to y's dtype."""
    m = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    total = tl.zeros([BLOCK], tl.float32)
    for i in range(0, splits):
        total += tl.load(part_ptr + (i * M + m) * N + cols, mask=mask, other=0.0)
    tl.store(y_ptr + m * stride_ym + cols, total.to(y_ptr.dtype.element_ty), mask=mask)


def k_splits(n: int, k: int, block_n: int, block_k: int, num_sms: int) -> int:
    """How many ranges of whole tiles to cut K into: enough programs for SPLIT_TARGET per multiprocessor, each range
    at least MIN_SPLIT_TILES tiles, and a divisor of the tile count so every range is whole. Shapes only (graphs)."""
    programs, tiles = -(-n // block_n), k // block_k
    want = -(-SPLIT_TARGET * num_sms // programs)
    best = 1
    for split in range(1, tiles // MIN_SPLIT_TILES + 1):
        if split > want:
            break
        if tiles % split == 0:
            best = split
    return best


def skinny_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor | None = None,
                  group_size: int = 0, out: torch.Tensor | None = None, silu_input: bool = False) -> torch.Tensor:
    """x [M <= 16, K] @ W^T -> [M, N] in x's dtype.

    `weight` is float8 [N, K] with `scales` [N] or [1] (no `mins`), or int4 nibbles [N, K // 2] uint8 with
    `scales`/`mins` [N, K // group_size]. With `silu_input`, x is the merged gate/up output [M, 2K].
    """
    rows = x.shape[0]
    k = x.shape[1] // 2 if silu_input else x.shape[1]
    int4 = mins is not None
    n = weight.shape[0]
    k_w = weight.shape[1] * (2 if int4 else 1)
    if k != k_w or x.stride(1) != 1:
        raise ValueError(f"skinny_matmul: x {tuple(x.shape)} does not match a [{n}, {k_w}] weight")
    if rows > MAX_ROWS:
        raise ValueError(f"skinny_matmul takes at most {MAX_ROWS} rows, not {rows}")
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device) if out is None else out
    if rows == 0:
        return y
    block_n, block_k, warps, stages = CONFIG["int4" if int4 else "fp8"]
    if int4:
        block_k = min(block_k, group_size)  # one group per tile: its scale and minimum apply to the whole dot
        if k % 8:
            raise ValueError(f"int4 weights need an input size divisible by 8, not {k}")
        # bf16 activations read the nibbles as int16 (four each), others as int32 words (eight each).
        weight = weight.view(torch.int16 if x.dtype == torch.bfloat16 else torch.int32)
    block_k = min(block_k, triton.next_power_of_2(k))
    while k % block_k and block_k > 16:  # narrower models (576 wide: the default model) take a narrower tile
        block_k //= 2
    if k % block_k:
        raise ValueError(f"skinny_matmul: input size {k} is not a multiple of the {block_k}-wide tile")
    splits = k_splits(n, k, block_n, block_k, sm_count(x.device)) if SPLIT_K else 1
    target = torch.empty(splits, rows, n, dtype=torch.float32, device=x.device) if splits > 1 else y
    _skinny_kernel[(triton.cdiv(n, block_n), splits)](
        x, weight, scales, mins if int4 else scales, target, rows, n, k, k // splits, x.stride(0), weight.stride(0),
        scales.stride(0) if int4 else 0, y.stride(0), KIND=int(int4), GROUP=max(group_size, 1),
        PER_CHANNEL=scales.numel() > 1, SILU_INPUT=silu_input, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
        BF16_BITS=x.dtype == torch.bfloat16, SPLIT=splits > 1, num_warps=warps, num_stages=stages)
    if splits > 1:
        _add_splits_kernel[(triton.cdiv(n, 1024), rows)](target, y, rows, n, splits, y.stride(0), BLOCK=1024,
                                                           num_warps=4)
    return y
