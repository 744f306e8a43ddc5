"""W4A16 decode (1 to 8 rows) with integer dot products: the activations in exact 16-bit fixed point.

Why: a float GEMV over 4-bit weights spends a shift, a mask and a multiply-add on every weight, and on
Hopper the integer pipe that runs the first two has half the float pipe's width; that, not the bytes,
held our float kernel (and torch's tinygemm) to 41-51% of an H200's copy bandwidth at 70B shapes; this
one reads 61-87% (benchmarks/results/gpu-int4-decode-h200-2026-11-30.md). Here eight weights cost seven
instructions (three to split a word's nibbles into two registers of four bytes, four `dp2a` two-way dot
products of 16-bit activations with weight bytes).

How the activations stay 16-bit: per block of 32 inputs, `activation_planes` scales the row to integers
within +-32767 (scale = max|x| / 32767; the rounding error is at most half a unit, 2^-16 of the block's
largest value, finer than bf16's own 2^-9 for the values that matter; llama.cpp's 8-bit activation blocks
keep 2^-8) and stores them as int16 pairs laid out to meet the nibbles where they lie in a weight word
(k = 8c + i at bits 4i: the low nibbles of its four bytes are k = 8c + 0, 2, 4, 6 and the high nibbles the odd
k). Per weight word four int32 "planes" hold (x0, x2), (x4, x6), (x1, x3), (x5, x7); `dp2a.lo` meets a pair with
bytes 0-1 of a nibble register and `dp2a.hi` with bytes 2-3, so `q . x` is exact in int32, per block. A weight
group's float value is then `s * sum_blocks(x_scale * q . x) + m * sum(x)` (the minimum term uses the float sum
of the group's inputs).

Why `dp2a` and not `dp4a`: the activations were first split into a signed high and an unsigned low byte for
four `dp4a` and a shift per word (eight instructions). At 70B the decode step runs at the H200's 700 W cap
(benchmarks/results/gpu-int4-70b-h200-2026-11-30-session6.md), so an instruction less per word is energy the
clock gets back.

Why one chain per block (`CHAIN_BLOCKS`): the four words of an activation block (32 inputs, one scale) run
their sixteen `dp2a` through one accumulator in one piece of inline assembly, so no integer adds join the
words' dots. The loaded [rows, words] tile is split into the block's four words by register renames, and the
block's sixteen plane values come from one contiguous load. On an H200 at the power cap this took 70B INT4
from 89.6 to 92.4 decode tok/s on the same machine, 7.91 to 7.65 J a token
(benchmarks/results/gpu-int4-70b-h200-2026-11-30-session7.md).

The GEMV is launched as a programmatic dependent of the planes kernel (PDL, Hopper): it is scheduled while
the planes are still being written and waits for them in the kernel, so the second launch adds no gap
(about 1 us a call at 70B's smaller shapes). (Outside CUDA and in the interpreter both run plainly.)

Triton's interpreter cannot run inline assembly; there the same integer arithmetic runs byte by byte.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.activation import load_activation
from llamarun.kernels.gemv import fit_block_k, launch_override
from llamarun.kernels.pdl import pdl_launch

# (BLOCK_N, BLOCK_K, num_warps) of the GEMV, read at call time so a benchmark can sweep them: "int4" for weights
# of many output rows, "int4_narrow" for those of at most NARROW rows (70B's q/k/v, o and down, 8B's but its
# gate/up and head), which give the wide launch too few programs to fill the GPU. LLAMARUN_GEMV_INT4 and
# LLAMARUN_GEMV_INT4_NARROW override them. Swept on the H200 over 8B and 70B shapes, 2026-11-30
# (benchmarks/gpu_int4_decode.py).
CONFIG = {"int4": launch_override("int4", (8, 4096, 4)),
          "int4_narrow": launch_override("int4_narrow", (8, 4096, 8))}
NARROW = 16384
USE_ASM = True  # False runs the portable path on GPUs too (benchmarks measure what dp2a buys)
MAX_ROWS = 8  # the most rows the GEMV takes; `rows_for` says up to how many it should
# Rows up to which the GEMV beats the skinny tensor-core kernel, by the weight's shape. Its integer work grows with
# the rows while the skinny kernel's time hardly does, so the crossover comes later the more output rows share each
# input: measured on an H200 (benchmarks/results/gpu-int4-gemv-rows-h200-2026-11-30.md), 70B's gate/up still wins at
# 8 rows (264 against 277 us), q/k/v and o at 6 (48 against 58, 40 against 47), down only at 4 (106 against 145).
ROWS_WIDE = 8  # N >= 4 K: gate/up (an INT4 output head, vocab x hidden, falls here too: inferred, not measured)
ROWS_SQUARE = 6  # K <= N: q/k/v, o
ROWS_TALL = 4  # K > N: down
USE_PDL = True  # False launches the GEMV after the planes kernel has finished (benchmarks measure the gap)
CHAIN_BLOCKS = True  # one dp2a chain per activation block (False: per word, then integer adds; for A/B runs)


BLOCK = 32  # inputs per activation scale


@triton.jit
def _store_pairs(v, base, first: tl.constexpr, GW: tl.constexpr):
    """v [GW, 4] int32 (each within int16) -> planes first, first + 1 of each word: (v0, v1) and (v2, v3) as int16
    pairs, the first of each pair in the low half."""
    low, high = tl.split(tl.reshape(v, [GW, 2, 2]))  # [GW, 2]: (v0, v2) and (v1, v3)
    pairs = (low & 0xFFFF) | (high << 16)  # [GW, 2]; the shift wraps into the sign bit, as int16 pairs do
    tl.store(base[:, None] + first + tl.arange(0, 2)[None, :], pairs)


@triton.jit
def store_group_planes(x, g, planes_ptr, scale_ptr, sum_ptr, GROUP: tl.constexpr):
    """Weight group g of one row, x [GROUP/8, 8] float32 (word c holding k = 8c + i) -> its int16-pair planes
    [G/8, 4] int32, a scale per 32 inputs and its float sum, at the row's planes, scales and sums (also written by the
    RMSNorm that feeds an INT4 linear: kernels/norm_planes.py)."""
    GW: tl.constexpr = GROUP // 8
    NB: tl.constexpr = GROUP // 32
    cs = tl.arange(0, GW)
    amax = tl.max(tl.reshape(tl.abs(x), [NB, 32]), axis=1)  # [NB]
    scale = tl.where(amax > 0, amax / 32767.0, 1.0)  # [NB]
    word_scale = tl.reshape(tl.broadcast_to(scale[:, None], [NB, 4]), [GW])  # four words per block
    xi = tl.floor(x / word_scale[:, None] + 0.5).to(tl.int32)  # [GW, 8] in -32767..32767
    even, odd = tl.split(tl.reshape(xi, [GW, 4, 2]))  # [GW, 4] each: k = 8c + 2b and 8c + 2b + 1
    base = planes_ptr + (g * GW + cs) * 4
    # Each nibble register is met by two pairs, (byte 0, byte 1) and (byte 2, byte 3): pair p = (v[2p], v[2p + 1]).
    _store_pairs(even, base, 0, GW)  # planes 0, 1: (x0, x2), (x4, x6)
    _store_pairs(odd, base, 2, GW)  # planes 2, 3: (x1, x3), (x5, x7)
    tl.store(scale_ptr + g * NB + tl.arange(0, NB), scale)
    tl.store(sum_ptr + g, tl.sum(tl.sum(x, axis=1), axis=0))


@triton.jit
def _activation_planes_kernel(x_ptr, planes_ptr, scale_ptr, sum_ptr, K, stride_xm, SILU_INPUT: tl.constexpr,
                              GROUP: tl.constexpr, PDL: tl.constexpr):
    """One weight group of one row -> its int16-pair planes [G/8, 4] int32, a scale per 32 inputs, its float sum."""
    if PDL:
        gdc_launch_dependents()  # the GEMV may be scheduled now; it waits for this grid before reading
        gdc_wait()  # this kernel is itself a programmatic dependent: x is written by the kernel before
    g = tl.program_id(0)
    row = tl.program_id(1)
    GW: tl.constexpr = GROUP // 8
    ks = g * GROUP + tl.arange(0, GW)[:, None] * 8 + tl.arange(0, 8)[None, :]  # [GW, 8]: word c holds k = 8c + i
    x = load_activation(x_ptr + row * stride_xm, ks, ks < K, K, SILU_INPUT)  # [GW, 8] float32
    store_group_planes(x, g, planes_ptr + row * (K // 8) * 4, scale_ptr + row * (K // 32), sum_ptr + row * (K // GROUP),
                       GROUP)


@triton.jit
def _half(v, high: tl.constexpr):
    """The signed 16-bit low or high half of int32 v."""
    return v >> 16 if high else (v << 16) >> 16


@triton.jit
def _word_dot(words, p0, p1, p2, p3, ASM: tl.constexpr):
    """Per weight word (8 nibbles): sum_i q_i x_i as int32, the x_i from the four int16-pair planes."""
    if ASM:
        return tl.inline_asm_elementwise(
            """
            {
            .reg .b32 n0, n1, t;
            and.b32 n0, $1, 0x0F0F0F0F;
            shr.u32 t, $1, 4;
            and.b32 n1, t, 0x0F0F0F0F;
            dp2a.lo.s32.u32 t, $2, n0, 0;
            dp2a.hi.s32.u32 t, $3, n0, t;
            dp2a.lo.s32.u32 t, $4, n1, t;
            dp2a.hi.s32.u32 $0, $5, n1, t;
            }
            """,
            "=r,r,r,r,r,r", [words, p0, p1, p2, p3], dtype=tl.int32, is_pure=True, pack=1)
    total = tl.zeros_like(words)
    for b in tl.static_range(4):  # byte b of each nibble register: k = 8c + 2b (even) and 8c + 2b + 1 (odd)
        q_even = (words >> (8 * b)) & 15
        q_odd = (words >> (8 * b + 4)) & 15
        pair_even = p0 if b < 2 else p1
        pair_odd = p2 if b < 2 else p3
        total += q_even * _half(pair_even, b % 2 == 1) + q_odd * _half(pair_odd, b % 2 == 1)
    return total


@triton.jit
def _quarters(t, X: tl.constexpr):
    """t [X, 4] -> its columns 0, 1, 2, 3, each [X] (register renames when a thread holds a row's four)."""
    even, odd = tl.split(tl.reshape(t, [X, 2, 2]))  # [X, 2] each: columns (0, 2) and (1, 3)
    c0, c2 = tl.split(even)
    c1, c3 = tl.split(odd)
    return c0, c1, c2, c3


@triton.jit
def _block_dot(w0, w1, w2, w3, p00, p01, p02, p03, p10, p11, p12, p13, p20, p21, p22, p23, p30, p31, p32, p33,
               ASM: tl.constexpr):
    """Per activation block (four weight words w0..w3, word j meeting planes pj0..pj3): sum_i q_i x_i as int32.

    With ASM the sixteen dp2a are one chain through one accumulator: no integer adds between a block's words."""
    if ASM:
        return tl.inline_asm_elementwise(
            """
            {
            .reg .b32 n0, n1, t, u;
            and.b32 n0, $1, 0x0F0F0F0F;
            shr.u32 u, $1, 4;
            and.b32 n1, u, 0x0F0F0F0F;
            dp2a.lo.s32.u32 t, $5, n0, 0;
            dp2a.hi.s32.u32 t, $6, n0, t;
            dp2a.lo.s32.u32 t, $7, n1, t;
            dp2a.hi.s32.u32 t, $8, n1, t;
            and.b32 n0, $2, 0x0F0F0F0F;
            shr.u32 u, $2, 4;
            and.b32 n1, u, 0x0F0F0F0F;
            dp2a.lo.s32.u32 t, $9, n0, t;
            dp2a.hi.s32.u32 t, $10, n0, t;
            dp2a.lo.s32.u32 t, $11, n1, t;
            dp2a.hi.s32.u32 t, $12, n1, t;
            and.b32 n0, $3, 0x0F0F0F0F;
            shr.u32 u, $3, 4;
            and.b32 n1, u, 0x0F0F0F0F;
            dp2a.lo.s32.u32 t, $13, n0, t;
            dp2a.hi.s32.u32 t, $14, n0, t;
            dp2a.lo.s32.u32 t, $15, n1, t;
            dp2a.hi.s32.u32 t, $16, n1, t;
            and.b32 n0, $4, 0x0F0F0F0F;
            shr.u32 u, $4, 4;
            and.b32 n1, u, 0x0F0F0F0F;
            dp2a.lo.s32.u32 t, $17, n0, t;
            dp2a.hi.s32.u32 t, $18, n0, t;
            dp2a.lo.s32.u32 t, $19, n1, t;
            dp2a.hi.s32.u32 $0, $20, n1, t;
            }
            """,
            "=r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",  # one output, four words, sixteen planes
            [w0, w1, w2, w3, p00, p01, p02, p03, p10, p11, p12, p13, p20, p21, p22, p23, p30, p31, p32, p33],
            dtype=tl.int32, is_pure=True, pack=1)
    return (_word_dot(w0, p00, p01, p02, p03, False) + _word_dot(w1, p10, p11, p12, p13, False)
            + _word_dot(w2, p20, p21, p22, p23, False) + _word_dot(w3, p30, p31, p32, p33, False))


@triton.jit
def _gemv_int4_planes_kernel(planes_ptr, xscale_ptr, xsum_ptr, w_ptr, s_ptr, m_ptr, y_ptr, N, K, stride_wn,
                             stride_sn, stride_ym, ROWS: tl.constexpr, RP: tl.constexpr, GROUP: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr,
                             CHAIN: tl.constexpr):
    WORDS: tl.constexpr = BLOCK_K // 8
    NB: tl.constexpr = BLOCK_K // 32  # activation blocks per tile
    NG: tl.constexpr = BLOCK_K // GROUP
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    cs = tl.arange(0, WORDS)
    cols = tl.arange(0, RP)  # activation rows: each weight word, loaded once, meets every row's planes
    acc = tl.zeros([BLOCK_N, RP], tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    if PDL:
        gdc_wait()  # the planes kernel's writes are visible from here on
    for k0 in range(0, K, BLOCK_K):  # K is a multiple of BLOCK_K (checked by the caller)
        # (Loading the next tile's words into registers before this tile's arithmetic measured slower:
        # 78.5 against 71.6 us at 70B's gate/up.)
        words = tl.load(w_rows + (k0 // 8 + cs)[None, :], mask=n_mask[:, None], other=0)  # [BN, WORDS] int32
        g = k0 // GROUP + tl.arange(0, NG)
        s = tl.load(s_ptr + rows[:, None] * stride_sn + g[None, :], mask=n_mask[:, None], other=0.0).to(tl.float32)
        m = tl.load(m_ptr + rows[:, None] * stride_sn + g[None, :], mask=n_mask[:, None], other=0.0).to(tl.float32)
        if CHAIN:  # a block's four words as four [BN, NB] tensors
            w0, w1, w2, w3 = _quarters(tl.reshape(words, [BLOCK_N * NB, 4]), BLOCK_N * NB)
            w0 = tl.reshape(w0, [BLOCK_N, NB])
            w1 = tl.reshape(w1, [BLOCK_N, NB])
            w2 = tl.reshape(w2, [BLOCK_N, NB])
            w3 = tl.reshape(w3, [BLOCK_N, NB])
        for r in tl.static_range(ROWS):
            if CHAIN:
                # The tile's planes [NB, word j, plane p], 16 contiguous int32 a block; each [NB] piece is
                # broadcast over the tile's weight rows.
                pl = tl.load(planes_ptr + r * (K // 8) * 4 + (k0 // 8) * 4 + tl.arange(0, WORDS * 4))
                by_plane = tl.reshape(pl, [NB * 4, 4])
                q0, q1, q2, q3 = _quarters(by_plane, NB * 4)  # plane p of every (block, word): [NB * 4]
                p00, p10, p20, p30 = _quarters(tl.reshape(q0, [NB, 4]), NB)
                p01, p11, p21, p31 = _quarters(tl.reshape(q1, [NB, 4]), NB)
                p02, p12, p22, p32 = _quarters(tl.reshape(q2, [NB, 4]), NB)
                p03, p13, p23, p33 = _quarters(tl.reshape(q3, [NB, 4]), NB)
                d = _block_dot(w0, w1, w2, w3, p00[None, :], p01[None, :], p02[None, :], p03[None, :],
                               p10[None, :], p11[None, :], p12[None, :], p13[None, :],
                               p20[None, :], p21[None, :], p22[None, :], p23[None, :],
                               p30[None, :], p31[None, :], p32[None, :], p33[None, :], ASM)  # [BN, NB]
                per_block = d.to(tl.float32)  # exact q . x per block
            else:
                p = planes_ptr + r * (K // 8) * 4 + (k0 // 8 + cs) * 4
                d = _word_dot(words, tl.load(p)[None, :], tl.load(p + 1)[None, :], tl.load(p + 2)[None, :],
                              tl.load(p + 3)[None, :], ASM)  # [BN, WORDS] int32
                per_block = tl.sum(tl.reshape(d, [BLOCK_N, NB, 4]), axis=2).to(tl.float32)  # [BN, NB] exact q . x
            x_scale = tl.load(xscale_ptr + r * (K // 32) + k0 // 32 + tl.arange(0, NB))  # [NB]
            per_group = tl.sum(tl.reshape(per_block * x_scale[None, :], [BLOCK_N, NG, GROUP // 32]), axis=2)
            x_sum = tl.load(xsum_ptr + r * (K // GROUP) + g)  # [NG]
            part = tl.sum(s * per_group + m * x_sum[None, :], axis=1)  # [BN]
            acc += tl.where(cols[None, :] == r, part[:, None], 0.0)
    if PDL:
        gdc_launch_dependents()  # every load is done: the next kernel may be scheduled (pdl.py)
    tl.store(y_ptr + cols[None, :] * stride_ym + rows[:, None], acc.to(y_ptr.dtype.element_ty),
             mask=n_mask[:, None] & (cols[None, :] < ROWS))


Planes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (planes [M, K/8, 4] int32, scales [M, K/32], sums [M, K/G])


def rows_for(n: int, k: int) -> int:
    """Decode rows up to which an [n, k] INT4 weight should take the GEMV (more go to the tensor cores)."""
    if n >= 4 * k:
        return ROWS_WIDE
    return ROWS_SQUARE if k <= n else ROWS_TALL


def empty_planes(rows: int, k: int, group_size: int, device: torch.device) -> Planes:
    return (torch.empty(rows, k // 8, 4, dtype=torch.int32, device=device),
            torch.empty(rows, k // BLOCK, dtype=torch.float32, device=device),
            torch.empty(rows, k // group_size, dtype=torch.float32, device=device))


def activation_planes(x: torch.Tensor, group_size: int, silu_input: bool = False, pdl: bool = False) -> Planes:
    """x [M, K] (or the merged gate/up [M, 2K] with `silu_input`) -> (planes [M, K/8, 4] int32, scales
    [M, K/32], sums [M, K/G] float32)."""
    rows, k = x.shape[0], (x.shape[1] // 2 if silu_input else x.shape[1])
    planes, scales, sums = empty_planes(rows, k, group_size, x.device)
    _activation_planes_kernel[(k // group_size, rows)](x, planes, scales, sums, k, x.stride(0),
                                                       SILU_INPUT=silu_input, GROUP=group_size, PDL=pdl,
                                                       num_warps=1, **({"launch_pdl": True} if pdl else {}))
    return planes, scales, sums


def gemv_int4_planes(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                     group_size: int, out: torch.Tensor | None = None, silu_input: bool = False,
                     planes: Planes | None = None) -> torch.Tensor:
    """x [M <= MAX_ROWS, K] @ dequantize(Int4Weight)^T -> [M, N] in x's dtype; group sizes 32 to 256, powers
    of two. Each weight word is read once for all M rows (the integer work grows with M, the bytes do not).

    With `silu_input`, x is the merged gate/up output [M, 2K], read as silu(gate) * up. `planes` are x's
    activation planes when the kernel that wrote x wrote them too (`norm_planes.py`); then x is not read.
    """
    n, k_w = qweight.shape[0], qweight.shape[1] * 2
    rows, k = x.shape[0], (x.shape[1] // 2 if silu_input else x.shape[1])
    if not 1 <= rows <= MAX_ROWS or x.stride(-1) != 1 or k != k_w:
        raise ValueError(f"gemv_int4_planes: x {tuple(x.shape)} must be 1 to {MAX_ROWS} rows matching a "
                         f"[{n}, {k_w}] weight"
                         + (" (merged gate/up: twice the width)" if silu_input else ""))
    if group_size < 32 or group_size > 256 or group_size & (group_size - 1) or k % group_size:
        raise ValueError(f"gemv_int4_planes: group size {group_size} must be a power of two from 32 to 256 "
                         f"dividing the input size {k}")
    block_n, block_k, warps = CONFIG["int4_narrow" if n <= NARROW else "int4"]
    block_k = fit_block_k(k, block_k, least=group_size)
    pdl = USE_PDL and pdl_launch(x)[0]
    if planes is None:
        planes = activation_planes(x, group_size, silu_input, pdl)
    elif planes[0].shape != (rows, k // 8, 4) or planes[2].shape != (rows, k // group_size):
        raise ValueError(f"gemv_int4_planes: planes {tuple(planes[0].shape)} do not belong to x {tuple(x.shape)} "
                         f"in groups of {group_size}")
    planes, x_scales, x_sums = planes
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device) if out is None else out
    words = qweight.view(torch.int32)  # [N, K / 8]
    asm = USE_ASM and x.is_cuda
    extra = {"launch_pdl": True} if pdl else {}
    _gemv_int4_planes_kernel[(triton.cdiv(n, block_n),)](
        planes, x_scales, x_sums, words, scales, mins, y, n, k, words.stride(0), scales.stride(0), y.stride(0),
        ROWS=rows, RP=triton.next_power_of_2(rows), GROUP=group_size, BLOCK_N=block_n, BLOCK_K=block_k, ASM=asm,
        PDL=pdl, CHAIN=CHAIN_BLOCKS, num_warps=warps, **extra)
    return y
