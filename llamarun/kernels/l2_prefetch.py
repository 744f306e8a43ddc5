"""Pull a weight into the GPU's L2 cache ahead of the matmul that reads it, while the memory bus is idle.

Why: in a batch-1 decode step the attention kernels between the q/k/v and o projections read little (at 70B
and a 256-token context, about 1 MB of cache a layer) for several microseconds, so the card's bandwidth sits
unused there, every layer. Issued before attention, the o projection's weight streams into L2 meanwhile, and
the GEMV that follows reads from there (the H200's L2 is 50 MB; 70B's o projection in INT4 is 35 MB).

How: Hopper's bulk prefetch (`cp.async.bulk.prefetch.L2.global`): one instruction asks for up to a row of
bytes and returns at once; nothing waits for it. The kernel issues one per row of the 2-D byte region and
exits, and it is launched as a programmatic dependent that lets the next kernel start immediately (pdl.py),
so the step's chain does not wait for it. It reads nothing a step writes. A prefix of each row (the first
`row_bytes`) is fetched, so a budget smaller than the weight covers the first K-tiles of every output row,
which is what all of the GEMV's programs read first.

`LLAMARUN_L2_PREFETCH=off` turns it off; `LLAMARUN_L2_PREFETCH_MB` sets the budget (default: 40 MB, capped
at the card's L2 size).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

ENABLED = os.environ.get("LLAMARUN_L2_PREFETCH", "on").strip().lower() != "off"
BUDGET_MB = float(os.environ.get("LLAMARUN_L2_PREFETCH_MB", "40"))
ROWS_PER_PROGRAM = 256


@triton.jit
def _prefetch_rows_kernel(base_ptr, n_rows, row_stride, row_bytes, ROWS: tl.constexpr):
    gdc_launch_dependents()  # nothing after this kernel waits for it
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rows = tl.minimum(rows, n_rows - 1)  # a repeated row is a harmless second request
    addresses = (base_ptr + rows.to(tl.int64) * row_stride).to(tl.int64, bitcast=True)
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2;\n\tmov.u32 $0, 0;", "=r,l,r",
                              [addresses, tl.full([ROWS], row_bytes, tl.int32)], dtype=tl.int32, is_pure=False,
                              pack=1)


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


@functools.cache
def budget_bytes(index: int) -> int:
    l2 = torch.cuda.get_device_properties(index).L2_cache_size
    return int(min(BUDGET_MB * 2**20, l2))


def plan(shape_bytes: list[tuple[int, int]], budget: int) -> list[int]:
    """For tensors of (rows, bytes a row), how many bytes of each row to fetch within `budget`: the small ones
    (scales, minimums) whole, the rest an equal prefix of their rows, in multiples of 16 bytes (the
    instruction's unit). Returns one prefix length per tensor (0: none)."""
    prefixes = [0] * len(shape_bytes)
    order = sorted(range(len(shape_bytes)), key=lambda i: shape_bytes[i][0] * shape_bytes[i][1])
    left = budget
    for j, i in enumerate(order):
        rows, row_bytes = shape_bytes[i]
        share = left // (len(order) - j)  # an equal share of what is left for this and the larger ones
        take = min(row_bytes, share // max(rows, 1)) // 16 * 16
        prefixes[i] = take
        left -= take * rows
    return prefixes


FLAT_ROW = 4096  # bytes a row for tensors of short rows (scales, minimums): fetched as a flat array


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """A contiguous tensor as (its bytes, rows, bytes a row): its own rows when they are long, else rows of
    FLAT_ROW bytes (a tail shorter than that is left out)."""
    flat = t.reshape(-1).view(torch.uint8)
    row_bytes = t.shape[-1] * t.element_size() if t.dim() >= 2 else flat.numel()
    if row_bytes < 512 or row_bytes % 16:
        return flat, flat.numel() // FLAT_ROW, FLAT_ROW
    return flat, flat.numel() // row_bytes, row_bytes


def prefetch_l2(tensors: list[torch.Tensor]) -> None:
    """Ask for (a prefix of every row of) these CUDA tensors to be brought into L2; returns at once."""
    tensors = [t for t in tensors if t.is_cuda and t.numel() and t.is_contiguous() and t.data_ptr() % 16 == 0]
    if not ENABLED or not tensors or not _capable(tensors[0].device.index or 0):
        return
    views = [_rows(t) for t in tensors]
    prefixes = plan([(rows, row_bytes) for _, rows, row_bytes in views], budget_bytes(tensors[0].device.index or 0))
    for (flat, rows, row_bytes), take in zip(views, prefixes):
        if take and rows:
            _prefetch_rows_kernel[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](flat, rows, row_bytes, take,
                                                                          ROWS=ROWS_PER_PROGRAM, num_warps=4,
                                                                          launch_pdl=True)
