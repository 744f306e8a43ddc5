"""SwiGLU's middle: silu(gate) * up from the merged gate/up projection [T, 2 * intermediate].

One read of the merged row, one write of half its width, instead of torch's chunk + silu + mul
(three kernels, two intermediates). Rounding follows torch: silu in float32 rounded to the
dtype, then the product in float32 rounded again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.pdl import pdl_launch

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, width, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()  # pdl.py: the next kernel may be scheduled now
        gdc_wait()  # gate/up is written by the kernel before (pdl.py)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + width + cols, mask=mask, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_activation(x_ptr, offsets, mask, width, SILU_INPUT: tl.constexpr):
    """A matmul's input elements in float32; with SILU_INPUT, silu(gate) * up read from the merged
    [rows, 2 * width] gate/up output, rounded exactly as `_silu_and_mul_kernel` rounds (so a fused
    down projection sees the same activations as the two-kernel path). Offsets are into a row of
    `width` elements; the row stride must be the merged row's."""
    if SILU_INPUT:
        gate = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + offsets + width, mask=mask, other=0.0).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
        return (act * up).to(x_ptr.dtype.element_ty).to(tl.float32)
    return tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, 2I] (gate then up) -> silu(gate) * up [T, I] in x's dtype."""
    tokens, double = x.shape
    if double % 2 or x.stride(1) != 1:
        raise ValueError(f"silu_and_mul needs [T, 2I] with contiguous rows, got {tuple(x.shape)}")
    width = double // 2
    out = torch.empty(tokens, width, dtype=x.dtype, device=x.device) if out is None else out
    if tokens:
        pdl, launch = pdl_launch(x)
        _silu_and_mul_kernel[(tokens, triton.cdiv(width, BLOCK))](
            x, out, x.stride(0), out.stride(0), width, BLOCK=BLOCK, PDL=pdl, num_warps=4, **launch)
    return out


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    """models/llama.py's LlamaMLP middle: chunk, silu, multiply."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
