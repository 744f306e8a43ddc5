"""RMSNorm and fused residual-add + RMSNorm, one program per row.

Same rounding as layers/norm.py: the statistic and the scaling in float32, the normalised row cast
to the input dtype, then multiplied by the weight (the product rounded to the promoted dtype, as
torch's `weight * x` does). The fused form adds the residual in the input dtype first (as the
decoder's `x + attn(...)` does), so its two outputs equal `s = x + residual; rms_norm(s), s`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.pdl import pdl_launch


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, stride_x, stride_r, stride_o, stride_s,
                     n_cols, eps, BLOCK: tl.constexpr, ADD_RESIDUAL: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)  # no kernel of a step writes it
    if PDL:
        gdc_launch_dependents()  # pdl.py: the next kernel may be scheduled now
        gdc_wait()  # the rows are written by the kernels before (pdl.py)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_s + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x32 * x32, 0) / n_cols + eps)
    normed = (x32 * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
            out: torch.Tensor, summed: torch.Tensor | None) -> None:
    n_cols = x.shape[-1]
    rows = x.numel() // n_cols if n_cols else 0
    if weight.shape != (n_cols,):
        raise ValueError(f"weight {tuple(weight.shape)} does not match rows of {n_cols}")
    if rows == 0:
        return
    block = triton.next_power_of_2(n_cols)
    pdl, launch = pdl_launch(x)
    views = [t.view(rows, n_cols) for t in (x, out)]  # raises if the leading dims are not one stride
    extra = [t.view(rows, n_cols) for t in (residual, summed)] if residual is not None else views
    _rms_norm_kernel[(rows,)](
        views[0], extra[0], weight, views[1], extra[1],
        views[0].stride(0), extra[0].stride(0), views[1].stride(0), extra[1].stride(0), n_cols, eps,
        BLOCK=block, ADD_RESIDUAL=residual is not None, PDL=pdl, num_warps=min(max(block // 512, 1), 16), **launch)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., hidden] -> normalised x * weight in promote(x.dtype, weight.dtype) (layers/norm.py's RMSNorm)."""
    _check_rows(x)
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    _launch(x, None, weight, eps, out, None)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual), written in place: the sum into `residual`, the norm into `x`.

    Each program reads its row whole before writing, so in-place is safe. When the weight's dtype
    would promote the output (float32 weights, bf16 activations) the norm gets a new tensor instead.
    """
    _check_rows(x)
    _check_rows(residual)
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} does not match x {tuple(x.shape)}")
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = x if out_dtype == x.dtype else torch.empty(x.shape, dtype=out_dtype, device=x.device)
    _launch(x, residual, weight, eps, out, residual)
    return out, residual


def _check_rows(t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError("rows must be contiguous in their last dimension")


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Exactly layers/norm.py's RMSNorm.forward."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def fused_add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's `s = x + residual` followed by RMSNorm, out of place."""
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed
