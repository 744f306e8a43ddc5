"""Greedy decoding's argmax over the vocabulary, in two small kernels.

Why: torch's argmax of one 128k-wide row took 27.5 us on an H200 beside a 70B INT4 step's graph
(benchmarks/results/gpu-int4-70b-h200-2026-11-30-session5.md), most of it one block walking the row.
Here many programs each take a slice (the first kernel), and one program per row picks the best slice (the second).

Ties go to the lowest index, as torch's do. NaN counts as larger than every number, as in torch; a row of
several NaNs gives the first of them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SLICE = 2048  # vocabulary entries a program of the first kernel reads


@triton.jit
def _first_best(v, index, LEN: tl.constexpr):
    """(the largest of v with NaN above all, the first index holding it): rank NaNs first, then the largest."""
    nan = v != v
    top = tl.max(tl.where(nan, float("inf"), v), 0)
    key = tl.where(nan, index, tl.where(v == top, LEN + index, 3 * LEN))  # [LEN]
    first = tl.min(key, 0)
    return tl.where(first < LEN, float("nan"), top), first % LEN


@triton.jit
def _slice_max_kernel(x_ptr, best_ptr, where_ptr, n, stride, slices, SLICE: tl.constexpr):
    piece = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    cols = piece * SLICE + tl.arange(0, SLICE)
    x = tl.load(x_ptr + row * stride + cols, mask=cols < n, other=float("-inf")).to(tl.float32)
    best, first = _first_best(x, tl.arange(0, SLICE), SLICE)
    tl.store(best_ptr + row * slices + piece, best)
    tl.store(where_ptr + row * slices + piece, piece * SLICE + first)


@triton.jit
def _pick_slice_kernel(best_ptr, where_ptr, out_ptr, slices, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    v = tl.load(best_ptr + row * slices + i, mask=i < slices, other=float("-inf"))
    _, chosen = _first_best(v, i, BLOCK)  # slices are in index order: the first best slice holds the first index
    tl.store(out_ptr + row, tl.load(where_ptr + row * slices + chosen))


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x [R, V] (rows contiguous) -> the index of each row's largest entry [R] int64, as `x.argmax(dim=-1)`."""
    rows, n = x.shape
    if x.stride(1) != 1 or n == 0:
        raise ValueError(f"argmax_rows: x {tuple(x.shape)} needs contiguous non-empty rows")
    slices = triton.cdiv(n, SLICE)
    best = torch.empty(rows, slices, dtype=torch.float32, device=x.device)
    where = torch.empty(rows, slices, dtype=torch.int64, device=x.device)
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows:
        _slice_max_kernel[(slices, rows)](x, best, where, n, x.stride(0), slices, SLICE=SLICE, num_warps=8)
        _pick_slice_kernel[(rows,)](best, where, out, slices, BLOCK=max(16, triton.next_power_of_2(slices)),
                                    num_warps=4)
    return out
