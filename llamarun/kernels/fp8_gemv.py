"""Batch-1 decode against a float8 (e4m3) weight, read as 32-bit words of four weights.

Why not `gemv.py`'s float tile: there each weight byte gets a float32 accumulator until the end of the
tile, so the bytes a thread has in flight are capped by its registers (4 rows x 1024 inputs a tile, 32
bytes a thread), which held the H200 to 77-85% of its copy bandwidth at 70B shapes. Here a word of four
weights meets its four activations in one multiply-add chain into a single float32, so a thread carries
four times the bytes per accumulator: tiles of 8 rows x 4096 inputs, 128 bytes a thread, like the INT4
GEMV (`int4_gemv.py`) that reaches 87%.

Per word: two hardware conversions of byte pairs to half2 (`cvt.rn.f16x2.e4m3x2`, exact), four to float32,
four FMAs, in one inline-assembly block; the activations are converted to float32 once per tile and shared
by the tile's rows. The per-channel (or per-tensor) float32 scale applies once per output, as before.

The first tile of weights is loaded before the grid waits for its input (programmatic dependent launch on
Hopper): weights do not depend on the previous kernel, so their first load overlaps that kernel's tail.
Triton's interpreter cannot run inline assembly; there the bytes are decoded with integer arithmetic
(exactly: e4m3's bits placed into a float32's, then scaled by 2^120).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.activation import load_activation
from llamarun.kernels.gemv import fit_block_k, launch_override, store_scaled
from llamarun.kernels.pdl import pdl_launch

# (BLOCK_N, BLOCK_K, num_warps), read at call time so a benchmark can sweep them: "fp8w" for weights of more than
# NARROW output rows, "fp8w_narrow" for the others (fewer programs to fill the GPU with).
# LLAMARUN_GEMV_FP8W and LLAMARUN_GEMV_FP8W_NARROW override them.
CONFIG = {"fp8w": launch_override("fp8w", (8, 1024, 4)), "fp8w_narrow": launch_override("fp8w_narrow", (8, 2048, 4))}
NARROW = 16384
USE_ASM = True  # False decodes the bytes with integer arithmetic on GPUs too (benchmarks measure the asm)
USE_PDL = True


@triton.jit
def _word_fma(words, x0, x1, x2, x3, acc, ASM: tl.constexpr):
    """acc + sum_i e4m3(byte i of word) * x_i, in float32."""
    if ASM:
        return tl.inline_asm_elementwise(
            """
            {
            .reg .b16 lo, hi;
            .reg .b32 h0, h1;
            .reg .f16 a, b, c, d;
            .reg .f32 w0, w1, w2, w3, t;
            mov.b32 {lo, hi}, $1;
            cvt.rn.f16x2.e4m3x2 h0, lo;
            cvt.rn.f16x2.e4m3x2 h1, hi;
            mov.b32 {a, b}, h0;
            mov.b32 {c, d}, h1;
            cvt.f32.f16 w0, a;
            cvt.f32.f16 w1, b;
            cvt.f32.f16 w2, c;
            cvt.f32.f16 w3, d;
            fma.rn.f32 t, w0, $2, $6;
            fma.rn.f32 t, w1, $3, t;
            fma.rn.f32 t, w2, $4, t;
            fma.rn.f32 $0, w3, $5, t;
            }
            """,
            "=f,r,f,f,f,f,f", [words, x0, x1, x2, x3, acc], dtype=tl.float32, is_pure=True, pack=1)
    for i in tl.static_range(4):
        b = (words >> (8 * i)) & 255
        bits = ((b & 128) << 24) | ((b & 127) << 20)  # sign, then exponent and mantissa at the float's bottom
        value = bits.to(tl.float32, bitcast=True) * 1.329227995784916e36  # 2^120: e4m3's bias 7 against 127
        xi = x0 if i == 0 else (x1 if i == 1 else (x2 if i == 2 else x3))
        acc += value * xi
    return acc


@triton.jit
def _tile(words, x_ptr, k0, K, cs, acc, SILU_INPUT: tl.constexpr, WORDS: tl.constexpr, ASM: tl.constexpr):
    ks = k0 + cs[:, None] * 4 + tl.arange(0, 4)[None, :]  # [WORDS, 4]: word c holds inputs 4c..4c+3
    x = load_activation(x_ptr, ks, ks < K, K, SILU_INPUT)  # [WORDS, 4] float32
    even, odd = tl.split(tl.reshape(x, [WORDS, 2, 2]))  # [WORDS, 2] each: inputs 4c + {0, 2}, 4c + {1, 3}
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    return _word_fma(words, x0[None, :], x1[None, :], x2[None, :], x3[None, :], acc, ASM)


@triton.jit
def _gemv_fp8_words_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_wn, PER_CHANNEL: tl.constexpr,
                           SILU_INPUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           ASM: tl.constexpr, PDL: tl.constexpr):
    WORDS: tl.constexpr = BLOCK_K // 4
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    cs = tl.arange(0, WORDS)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N, WORDS], tl.float32)
    words = tl.load(w_rows + cs[None, :], mask=n_mask[:, None], other=0)  # [BN, WORDS] int32: the first tile
    if PDL:
        gdc_wait()  # the activations are written from here on (the weights never depend on the previous kernel)
    acc = _tile(words, x_ptr, 0, K, cs, acc, SILU_INPUT, WORDS, ASM)
    for k0 in range(BLOCK_K, K, BLOCK_K):  # K is a multiple of BLOCK_K (checked by the caller)
        words = tl.load(w_rows + (k0 // 4 + cs)[None, :], mask=n_mask[:, None], other=0)
        acc = _tile(words, x_ptr, k0, K, cs, acc, SILU_INPUT, WORDS, ASM)
    if PDL:
        gdc_launch_dependents()  # every load is done: the next kernel may be scheduled (pdl.py)
    store_scaled(tl.sum(acc, axis=1), s_ptr, y_ptr, rows, n_mask, PER_CHANNEL)


def gemv_fp8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None,
             silu_input: bool = False) -> torch.Tensor:
    """x [1, K] @ (weight [N, K] float8_e4m3fn * scale)^T -> [1, N] in x's dtype; K a multiple of 16.

    With `silu_input`, x is the merged gate/up output [1, 2K], read as silu(gate) * up.
    """
    n, k_w = weight.shape
    k = x.shape[1] // 2 if silu_input else x.shape[1]
    if (x.shape[0] != 1 or x.stride(-1) != 1 or k != k_w or k % 16 or weight.dtype != torch.float8_e4m3fn
            or weight.stride(-1) != 1 or weight.stride(0) % 4 or weight.storage_offset() % 4):
        raise ValueError(f"gemv_fp8: x {tuple(x.shape)} must be one row matching a [{n}, {k_w}] "
                         f"float8_e4m3fn weight with contiguous rows, the input size a multiple of 16 (weight "
                         f"{weight.dtype})" + (" (merged gate/up: twice the width)" if silu_input else ""))
    block_n, block_k, warps = CONFIG["fp8w_narrow" if n <= NARROW else "fp8w"]
    block_k = fit_block_k(k, block_k)
    y = torch.empty(1, n, dtype=x.dtype, device=x.device) if out is None else out
    words = weight.view(torch.int32)  # [N, K / 4]: four weights a word, byte i = input 4c + i
    pdl, extra = pdl_launch(x) if USE_PDL else (False, {})
    # the e4m3 pair conversion is an Ada/Hopper instruction
    asm = USE_ASM and x.is_cuda and torch.cuda.get_device_capability(x.device) >= (8, 9)
    _gemv_fp8_words_kernel[(triton.cdiv(n, block_n),)](
        x, words, scale, y, n, k, words.stride(0), PER_CHANNEL=scale.numel() > 1, SILU_INPUT=silu_input,
        BLOCK_N=block_n, BLOCK_K=block_k, ASM=asm, PDL=pdl, num_warps=warps, **extra)
    return y
