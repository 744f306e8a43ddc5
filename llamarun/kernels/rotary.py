"""Rotary embedding of q and k in place, Hugging Face's half-split layout (layers/rotary.py).

x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1): the first half becomes
x1 * cos1 - x2 * sin1 and the second x2 * cos2 + x1 * sin2. Program t rotates every query and key
head of token t, reading its cos/sin row once. q and k may be strided views of the merged qkv
output, which is where the rotated values land. The math runs in float32 and rounds once, where
the torch reference rounds after each of its three operations: results agree to an ulp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.pdl import pdl_launch


@triton.jit
def _rotate_heads(base, stride_h, c1, c2, s1, s2, HEADS: tl.constexpr, BLOCK_H: tl.constexpr,
                  HALF: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, HALF)
    ptr = base + heads[:, None] * stride_h + cols[None, :]  # [BLOCK_H, HALF] first halves
    mask = (heads < HEADS)[:, None]
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr, (x1 * c1 - x2 * s1).to(base.dtype.element_ty), mask=mask)
    tl.store(ptr + HALF, (x2 * c2 + x1 * s2).to(base.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh, stride_ct, stride_st,
                   Q_HEADS: tl.constexpr, K_HEADS: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
                   HALF: tl.constexpr, PDL: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    if PDL:
        gdc_launch_dependents()  # pdl.py: the next kernel may be scheduled now
        gdc_wait()  # q, k and cos/sin are written by the kernels before (pdl.py)
    cols = tl.arange(0, HALF)[None, :]
    c1 = tl.load(cos_ptr + token * stride_ct + cols).to(tl.float32)  # [1, HALF]
    c2 = tl.load(cos_ptr + token * stride_ct + HALF + cols).to(tl.float32)
    s1 = tl.load(sin_ptr + token * stride_st + cols).to(tl.float32)
    s2 = tl.load(sin_ptr + token * stride_st + HALF + cols).to(tl.float32)
    _rotate_heads(q_ptr + token * stride_qt, stride_qh, c1, c2, s1, s2, Q_HEADS, BLOCK_QH, HALF)
    _rotate_heads(k_ptr + token * stride_kt, stride_kh, c1, c2, s1, s2, K_HEADS, BLOCK_KH, HALF)


def apply_rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate q [T, heads, head_dim] and k [T, kv_heads, head_dim] in place by cos/sin [T, head_dim]."""
    tokens, q_heads, head_dim = q.shape
    k_heads = k.shape[1]
    if k.shape[0] != tokens or k.shape[2] != head_dim or cos.shape != (tokens, head_dim) or sin.shape != cos.shape:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)} do not agree")
    if head_dim & (head_dim - 1) or head_dim < 2:
        raise ValueError(f"head_dim {head_dim} is not a power of two")
    if q.stride(2) != 1 or k.stride(2) != 1 or cos.stride(1) != 1 or sin.stride(1) != 1:
        raise ValueError("apply_rotary_ needs head_dim (and cos/sin rows) contiguous")
    if tokens == 0:
        return
    pdl, launch = pdl_launch(q)
    _rotary_kernel[(tokens,)](
        q, k, cos, sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        Q_HEADS=q_heads, K_HEADS=k_heads, BLOCK_QH=triton.next_power_of_2(q_heads),
        BLOCK_KH=triton.next_power_of_2(k_heads), HALF=head_dim // 2, PDL=pdl, num_warps=4, **launch)


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Exactly layers/rotary.py's apply_rotary: x [T, heads, head_dim], cos/sin [T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # [tokens, heads, head_dim]
    return x * cos[:, None, :] + rotated * sin[:, None, :]
