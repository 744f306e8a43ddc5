"""RMSNorm (with its residual add) that also writes the INT4 activation planes of its output, for decode rows.

Why: an INT4 linear's batch-1 input went through two kernels, the norm and then `int4_gemv`'s planes kernel
(two of the four planes launches a layer, beside the norm's own). At 70B the norm ran as one program a row over
8192 values, about 2.2 us a launch, and the planes kernel about 1.3 us: together 0.6 ms of an 11.3 ms step
(benchmarks/results/gpu-step-kernels-70b-int4-h200-2026-11-30.json).

How: one program per weight group of a row (grid [groups, rows]). Each reads the whole row for the statistic
(16 KiB at 70B; after the first program it comes from L2), then normalises only its group and writes its
slice of the sum, of the normalised row and the group's planes (`int4_gemv.store_group_planes`), so the
planes are those the planes kernel would make of the same normalised row. Programs read what the others
write, so the outputs are new tensors, never the inputs in place. The rounding is `norm.py`'s.

`LLAMARUN_NORM_PLANES=off` keeps the two kernels (A/B runs).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.int4_gemv import MAX_ROWS, Planes, empty_planes, store_group_planes
from llamarun.kernels.pdl import pdl_launch

ENABLED = os.environ.get("LLAMARUN_NORM_PLANES", "on").strip().lower() != "off"


@triton.jit
def _rms_norm_planes_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, planes_ptr, pscale_ptr, psum_ptr,
                            stride_x, stride_r, n_cols, eps, BLOCK: tl.constexpr, GROUP: tl.constexpr,
                            ADD_RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    g = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    GW: tl.constexpr = GROUP // 8
    ks = g * GROUP + tl.arange(0, GW)[:, None] * 8 + tl.arange(0, 8)[None, :]  # [GW, 8]: this group's inputs
    weight = tl.load(weight_ptr + ks).to(tl.float32)  # no kernel of a step writes it
    if PDL:
        gdc_launch_dependents()  # the GEMV may be scheduled now; it waits for this grid before reading
        gdc_wait()  # the rows are written by the kernels before (pdl.py)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    mine = tl.load(x_ptr + row * stride_x + ks)
    if ADD_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        mine = (mine.to(tl.float32) + tl.load(residual_ptr + row * stride_r + ks).to(tl.float32)
                ).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * n_cols + ks, mine)
    x32 = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x32 * x32, 0) / n_cols + eps)
    normed = (mine.to(tl.float32) * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    h = (normed * weight).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * n_cols + ks, h)
    store_group_planes(h.to(tl.float32), g, planes_ptr + row * (n_cols // 8) * 4, pscale_ptr + row * (n_cols // 32),
                       psum_ptr + row * (n_cols // GROUP), GROUP)


def takes(x: torch.Tensor, group_size: int) -> bool:
    """Whether the fused kernel serves these rows: decode rows (as many as the INT4 GEMV takes) of a width made of
    whole groups."""
    return (ENABLED and x.dim() == 2 and 1 <= x.shape[0] <= MAX_ROWS and x.stride(-1) == 1
            and 32 <= group_size <= 256 and group_size & (group_size - 1) == 0 and x.shape[1] % group_size == 0)


def add_rms_norm_planes(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                        group_size: int) -> tuple[torch.Tensor, torch.Tensor, Planes]:
    """(rms_norm(x + residual), x + residual, the INT4 planes of the norm in groups of `group_size`); with no
    residual, (rms_norm(x), x, planes). x [rows <= MAX_ROWS, hidden]; the norm and the sum are new tensors."""
    rows, n_cols = x.shape
    if not takes(x, group_size) or weight.shape != (n_cols,):
        raise ValueError(f"add_rms_norm_planes: x {tuple(x.shape)} with weight {tuple(weight.shape)} is not 1 to "
                         f"{MAX_ROWS} rows of whole groups of {group_size}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype or residual.stride(-1) != 1):
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} does not match x {tuple(x.shape)}")
    out = torch.empty(rows, n_cols, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    summed = torch.empty(rows, n_cols, dtype=x.dtype, device=x.device) if residual is not None else x
    planes = empty_planes(rows, n_cols, group_size, x.device)
    pdl, launch = pdl_launch(x)
    r = residual if residual is not None else x
    _rms_norm_planes_kernel[(n_cols // group_size, rows)](
        x, r, weight, out, summed, *planes, x.stride(0), r.stride(0), n_cols, eps,
        BLOCK=triton.next_power_of_2(n_cols), GROUP=group_size, ADD_RESIDUAL=residual is not None, PDL=pdl,
        num_warps=4, **launch)
    return out, summed, planes
