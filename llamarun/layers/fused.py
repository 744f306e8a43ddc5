"""Small per-token ops with a Triton kernel on CUDA and plain torch elsewhere.

The model calls these and never asks which device it is on (DESIGN decision 2): on a GPU each op is
one kernel launch instead of several (fewer launches and fewer passes over the activations, which is
what a batch-1 decode step is made of); on CPUs, and where Triton is missing, the torch formulas run.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from llamarun.layers.rotary import apply_rotary


@functools.cache
def _triton_ready() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # not installed, or installed without a working backend
        return False
    return True


def use_kernels(x: torch.Tensor) -> bool:
    """Whether `x`'s ops should run as Triton kernels: CUDA tensors, with Triton importable."""
    return x.is_cuda and _triton_ready()


NORM_MAX_ROWS = 8  # the native norm's sum is sequential: on a prompt chunk PyTorch's vectorized one was as fast


def _native_ops(x: torch.Tensor, max_rows: int | None = None) -> tuple | None:
    """The native CPU small ops (kernels/cpu/small_ops.c) for a float32 `x` of at most `max_rows` rows on the CPU,
    when they built; else None. Prompt chunks split their rows over threads (rotary 3x, silu-and-mul 1.3x faster
    than PyTorch's ops at 191 rows on one core of the 2-core EPYC)."""
    if x.is_cuda or x.dtype != torch.float32 or (max_rows is not None and x.shape[0] > max_rows):
        return None
    from llamarun.kernels.cpu.build import load_small_ops

    return load_small_ops()


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 feeds: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual); with no residual yet, (rms_norm(x), x). x [tokens, hidden].

    `feeds` is the linear that reads the norm. If it would turn the norm into INT4 activation planes
    (`planes_group`), the norm kernel writes them too and hands them over (`give_planes`): one launch less.
    """
    if use_kernels(x):
        group = feeds.planes_group(x) if hasattr(feeds, "planes_group") else None
        if group is not None:
            from llamarun.kernels import norm_planes

            if norm_planes.takes(x, group):
                norm, total, planes = norm_planes.add_rms_norm_planes(x, residual, weight, eps, group)
                feeds.give_planes(norm, planes)
                return norm, total
        from llamarun.kernels.norm import fused_add_rms_norm, rms_norm

        if residual is None:
            return rms_norm(x, weight, eps), x
        return fused_add_rms_norm(x, residual, weight, eps)  # in place: x holds the norm, residual the sum
    native = _native_ops(x, NORM_MAX_ROWS)
    if (native is not None and x.dim() == 2 and x.is_contiguous() and weight.dtype == torch.float32
            and (residual is None or residual.is_contiguous())):
        return native[0](x, residual, weight.contiguous(), eps)  # one call for the add and the norm
    total = x if residual is None else x + residual
    return rms_norm_torch(total, weight, eps), total


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference RMSNorm: the statistic in float32, the weight applied in x's dtype (as HF Llama does)."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def rotate(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of q [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim] (HF half-split layout)."""
    head_dim = q.shape[-1]
    if use_kernels(q) and head_dim & (head_dim - 1) == 0:  # the kernel takes power-of-two head dims
        from llamarun.kernels.rotary import apply_rotary_

        apply_rotary_(q, k, cos, sin)
        return q, k
    native = _native_ops(q)
    if (native is not None and q.stride(-1) == 1 and k.stride(-1) == 1 and cos.dtype == torch.float32
            and cos.is_contiguous() and sin.is_contiguous()):
        return native[1](q, cos, sin), native[1](k, cos, sin)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up from the merged [tokens, 2 * intermediate] projection."""
    if use_kernels(gate_up):
        from llamarun.kernels.activation import silu_and_mul as kernel

        return kernel(gate_up)
    native = _native_ops(gate_up)
    if native is not None and gate_up.dim() == 2 and gate_up.is_contiguous():
        return native[2](gate_up)  # one call for the split, the silu and the product
    gate, up = gate_up.chunk(2, dim=-1)  # [tokens, intermediate] each
    return F.silu(gate) * up


def down_projection(down: torch.nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    """down(silu(gate) * up): one kernel when the (packed) layer can read the activation itself, else two steps.

    A quantized linear that offers `forward_silu_input(gate_up)` reads silu(gate) * up straight from the
    merged gate/up output in its decode kernel (one launch less per layer); plain linears run the
    activation kernel and then cuBLAS, which already streams bf16 weights at 77-100% of the H200's
    copy bandwidth at batch 1 (benchmarks/results/gpu-quant-kernels-h200-2026-11-29.md).
    """
    fused = getattr(down, "forward_silu_input", None)
    if fused is not None and use_kernels(gate_up):
        return fused(gate_up)
    return down(silu_and_mul(gate_up))
