"""Write this step's keys and values into their paged-cache slots: one launch for both.

Program t copies token t's [kv_heads, head_dim] key and value rows to slot `slot_mapping[t]` of every
head's slab. k/v may be strided views of the merged qkv projection (only head_dim must be contiguous).
Slots below 0 mark padding and are skipped, so a CUDA graph padded to a bucket writes nothing stray.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.pdl import pdl_launch


@triton.jit
def _kv_store_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh, stride_ckh, stride_cvh,
                     KV_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, PDL: tl.constexpr):
    token = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()  # pdl.py: the next kernel may be scheduled now
        gdc_wait()  # keys, values and slots are written by the kernels before (pdl.py)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, HEAD_DIM)
    # `heads * 0 + slot` broadcasts the scalar first: Triton's interpreter rejects a scalar mask term.
    mask = ((heads < KV_HEADS) & (heads * 0 + slot >= 0))[:, None] & (dims < HEAD_DIM)[None, :]  # [BLOCK_H, D]
    key = tl.load(k_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    value = tl.load(v_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    dst = slot * HEAD_DIM + dims[None, :]  # [1, HEAD_DIM] within each head's slab
    tl.store(k_cache_ptr + heads[:, None].to(tl.int64) * stride_ckh + dst,
             key.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + heads[:, None].to(tl.int64) * stride_cvh + dst,
             value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k/v [T, kv_heads, head_dim] -> k_cache/v_cache [kv_heads, slots, head_dim] at slot_mapping [T] (< 0: skip)."""
    tokens, kv_heads, head_dim = k.shape
    if k_cache.shape[0] != kv_heads or k_cache.shape[2] != head_dim or v.shape != k.shape:
        raise ValueError(f"k/v {tuple(k.shape)} do not match the cache slab {tuple(k_cache.shape)}")
    if k.stride(2) != 1 or v.stride(2) != 1 or k_cache.stride(1) != head_dim or v_cache.stride(1) != head_dim:
        raise ValueError("store_kv needs contiguous head_dim rows and contiguous cache slots")
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim {head_dim} is not a power of two")
    if tokens == 0:
        return
    pdl, launch = pdl_launch(k)
    _kv_store_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), v_cache.stride(0),
        KV_HEADS=kv_heads, BLOCK_H=triton.next_power_of_2(kv_heads), HEAD_DIM=head_dim, PDL=pdl, num_warps=4,
        **launch)


def store_kv_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """Pure-torch store_kv: an index_copy_ per slab over the non-padding tokens."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache.index_copy_(1, slots, k[keep].transpose(0, 1).to(k_cache.dtype))
    v_cache.index_copy_(1, slots, v[keep].transpose(0, 1).to(v_cache.dtype))
