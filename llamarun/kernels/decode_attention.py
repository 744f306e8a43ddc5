"""Paged decode attention: one query per sequence, the GQA group of a KV head together, split-K.

Program (sequence, kv head, split) loads each K/V tile once for all `group` query heads that share
it (rows of one small matmul, padded to 16 for the tensor cores) and writes a partial output with
its log-sum-exp; a second small kernel merges the splits. CUDA-graph safety: the grid and the
number of splits depend only on shapes (batch, heads, block-table width) and the card, never on
this step's sequence lengths; each split finds its own token range from `seq_lens` inside the
kernel, so a split past the end writes a neutral partial (lse = -inf) and a seq_len-0 row writes
zeros. With one split the first kernel writes the output itself and the merge is skipped. The split
count is a run-time argument, so graphs captured for many batch sizes share one compiled kernel.

Given the step's own keys and values (`new`), the program whose split holds a sequence's last position
writes them into their cache slot before it attends (a barrier makes them visible to its other threads):
an all-decode step needs no separate store kernel, one launch less per layer.

Two more launches a layer fold in the same way (70B INT4 at batch 1 is about 890 small launches a step):
- `rotary=(cos, sin)`: q and the step's keys arrive unrotated and the split kernel rotates them as it loads
  them, with the rotary kernel's arithmetic (float32, one rounding), so the rotary kernel is not launched.
- `planes=`: the merge kernel also writes the INT4 activation planes of its output for the output projection
  (`int4_gemv.store_group_planes`), so that projection's planes kernel is not launched. The merge then runs one
  program per weight group of a head (a group may not span heads).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from llamarun.kernels.attention_tile import attend_tile, dot_precision
from llamarun.kernels.int4_gemv import Planes, store_group_planes
from llamarun.kernels.pdl import pdl_launch

LOG2E = 1.4426950408889634
BLOCK_N = 64  # tokens per K/V tile: four 16-token pages
# Shorter splits cost more in merging than they win in parallelism. At batch 1 on an H200 (70B's heads) 64 led:
# 6.1 against 6.8 us at a 256-token context, 6.9 against 8.3 at 1024 (benchmarks/gpu_decode_splits.py).
MIN_SPLIT_TOKENS = 64
MAX_SPLITS = 64
# Launch tuning, read at call time (benchmarks/gpu_kernels_sweep.py varies them). On an H200 at 8B shapes these
# led or tied every case swept: 3.9 TB/s at 64 x 1024, 3.0 at 1 x 32768 (graph-replayed, L2 flushed).
NUM_WARPS, NUM_STAGES = 4, 3


@triton.jit
def _partner(dims, HEAD_DIM: tl.constexpr):
    """The other half's element of each dimension: rotate_half pairs d with d + D/2."""
    return (dims + HEAD_DIM // 2) % HEAD_DIM


@triton.jit
def _rotate(x, partner, dims, cos_row, sin_row, HEAD_DIM: tl.constexpr):
    """Rotary embedding of x (HF half-split layout) in float32, rounded once to x's dtype, as kernels/rotary.py
    does: the first half x1 cos - x2 sin, the second x2 cos + x1 sin."""
    c = tl.load(cos_row + dims).to(tl.float32)
    s = tl.load(sin_row + dims).to(tl.float32)
    first = dims < HEAD_DIM // 2
    x32 = x.to(tl.float32)
    p32 = partner.to(tl.float32)
    return tl.where(first, x32 * c - p32 * s, x32 * c + p32 * s).to(x.dtype)


@triton.jit
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, seq_lens_ptr, out_ptr, part_ptr, lse_ptr, qk_scale,
                         num_splits, stride_qb, stride_qh, stride_kh, stride_vh, stride_tb, stride_ob, stride_oh,
                         k_new_ptr, v_new_ptr, slots_ptr, stride_knb, stride_knh, stride_vnb, stride_vnh,
                         cos_ptr, sin_ptr, stride_cos, stride_sin,
                         GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
                         BLOCK_N: tl.constexpr, DIRECT: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
                         STORE_NEW: tl.constexpr, ROTARY: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if PDL:
        gdc_launch_dependents()  # pdl.py: the next kernel may be scheduled now
        gdc_wait()  # q, the cache and the step's tables are written by the kernels before (pdl.py)
    seq_len = tl.load(seq_lens_ptr + seq)
    # Whole tiles per split, so only a split's last tile needs masking.
    tiles_per_split = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), num_splits)
    start = split * tiles_per_split * BLOCK_N
    end = tl.minimum(start + tiles_per_split * BLOCK_N, seq_len)
    full_end = start + tl.maximum(end - start, 0) // BLOCK_N * BLOCK_N

    groups = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, HEAD_DIM)
    if STORE_NEW:  # this step's key and value, written by the split that reads their slot
        slot = tl.load(slots_ptr + seq)
        mine = (seq_len > 0) & (slot >= 0) & ((seq_len - 1) // tl.maximum(tiles_per_split * BLOCK_N, 1) == split)
        mask = (dims * 0 + mine.to(tl.int32)) > 0  # [HEAD_DIM]: the interpreter rejects a scalar mask
        key = tl.load(k_new_ptr + seq * stride_knb + kv_head * stride_knh + dims, mask=mask)
        if ROTARY:
            partner = tl.load(k_new_ptr + seq * stride_knb + kv_head * stride_knh + _partner(dims, HEAD_DIM), mask=mask)
            key = _rotate(key, partner, dims, cos_ptr + seq * stride_cos, sin_ptr + seq * stride_sin, HEAD_DIM)
        value = tl.load(v_new_ptr + seq * stride_vnb + kv_head * stride_vnh + dims, mask=mask)
        row = slot.to(tl.int64) * HEAD_DIM + dims
        tl.store(k_ptr + kv_head.to(tl.int64) * stride_kh + row, key.to(k_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + kv_head.to(tl.int64) * stride_vh + row, value.to(v_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the tile loads below, by any thread of this program, see them
    heads = kv_head * GROUP + groups  # [BLOCK_G] query heads of this KV head
    live = groups < GROUP
    q_rows = q_ptr + seq * stride_qb + heads[:, None] * stride_qh
    q = tl.load(q_rows + dims[None, :], mask=live[:, None], other=0.0)
    if ROTARY:
        partner = tl.load(q_rows + _partner(dims, HEAD_DIM)[None, :], mask=live[:, None], other=0.0)
        q = _rotate(q, partner, dims[None, :], cos_ptr + seq * stride_cos, sin_ptr + seq * stride_sin, HEAD_DIM)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    k_base = k_ptr + kv_head.to(tl.int64) * stride_kh
    v_base = v_ptr + kv_head.to(tl.int64) * stride_vh
    table_row = tables_ptr + seq.to(tl.int64) * stride_tb
    for tile in range(start, full_end, BLOCK_N):
        m, denom, acc = attend_tile(q, m, denom, acc, k_base, v_base, table_row, tile, end, m, qk_scale,
                                PAGE, BLOCK_N, HEAD_DIM, False, False, PRECISION)
    for tile in range(full_end, end, BLOCK_N):  # the ragged last tile, if any
        m, denom, acc = attend_tile(q, m, denom, acc, k_base, v_base, table_row, tile, end, m, qk_scale,
                                PAGE, BLOCK_N, HEAD_DIM, True, False, PRECISION)

    partial = acc / tl.where(denom > 0, denom, 1.0)[:, None]  # [BLOCK_G, HEAD_DIM]; zeros where no keys
    if DIRECT:
        dst = out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :]
        tl.store(dst, partial.to(out_ptr.dtype.element_ty), mask=live[:, None])
    else:
        # Workspace rows [batch, heads, splits], each HEAD_DIM wide and contiguous.
        rows = (seq * (tl.num_programs(1) * GROUP) + heads) * num_splits + split  # [BLOCK_G]
        tl.store(part_ptr + rows[:, None] * HEAD_DIM + dims[None, :], partial, mask=live[:, None])
        lse = tl.where(denom > 0, m + tl.log2(tl.where(denom > 0, denom, 1.0)), float("-inf"))
        tl.store(lse_ptr + rows, lse, mask=live)


@triton.jit
def _decode_merge_kernel(part_ptr, lse_ptr, out_ptr, planes_ptr, pscale_ptr, psum_ptr, num_splits, stride_ob, stride_oh,
                         HEAD_DIM: tl.constexpr, SLICE: tl.constexpr, BLOCK_S: tl.constexpr, PLANES: tl.constexpr,
                         PDL: tl.constexpr):
    """Program (sequence, head, slice): SLICE of the head's HEAD_DIM outputs (with PLANES, one weight group)."""
    seq = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()  # pdl.py: the next kernel may be scheduled now
        gdc_wait()
    head = tl.program_id(1)
    piece = tl.program_id(2)
    row = seq * tl.num_programs(1) + head
    splits = tl.arange(0, BLOCK_S)
    # [SLICE / 8, 8]: the slice's dims as INT4 planes words hold them (word c: dims 8c .. 8c + 7)
    dims = piece * SLICE + tl.arange(0, SLICE // 8)[:, None] * 8 + tl.arange(0, 8)[None, :]
    live = splits < num_splits
    lse = tl.load(lse_ptr + row * num_splits + splits, mask=live, other=float("-inf"))  # [BLOCK_S]
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)  # all splits empty (seq_len 0): weights all 0
    weight = tl.exp2(lse - top)
    parts = tl.load(part_ptr + (row * num_splits + splits)[:, None, None] * HEAD_DIM + dims[None, :, :],
                    mask=live[:, None, None], other=0.0)  # [BLOCK_S, SLICE / 8, 8]
    total = tl.sum(weight, 0)
    merged = tl.sum(parts * weight[:, None, None], 0) / tl.where(total > 0, total, 1.0)  # [SLICE / 8, 8]
    dst = out_ptr + seq * stride_ob + head * stride_oh + dims
    tl.store(dst, merged.to(out_ptr.dtype.element_ty))
    if PLANES:  # the output row [heads * HEAD_DIM] is contiguous, so this slice is weight group `g` of it
        # Read back what this program just wrote (a barrier makes it visible to all its threads), so the planes come
        # from a plain loaded tile, as in the planes kernel. Made from the reduction's result directly they came
        # out wrong for groups of 64 and more on an H200 (triton 3.6), though right in the interpreter.
        tl.debug_barrier()
        x = tl.load(dst).to(tl.float32)
        k = tl.num_programs(1) * HEAD_DIM
        g = head * (HEAD_DIM // SLICE) + piece
        store_group_planes(x, g, planes_ptr + seq * (k // 8) * 4, pscale_ptr + seq * (k // 32),
                           psum_ptr + seq * (k // SLICE), SLICE)


@functools.lru_cache(maxsize=8)
def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; a small stand-in elsewhere (interpreter runs on CPU)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_num_splits(batch: int, kv_heads: int, max_context: int, num_sms: int) -> int:
    """Splits per sequence so that batch * kv_heads * splits programs cover the card about twice.

    Every input is a shape or a property of the card, so a CUDA graph captured for one batch size
    keeps a valid split count whatever lengths later replays bring. `max_context` is the block
    table's capacity in tokens; splits never get shorter than MIN_SPLIT_TOKENS of it.
    """
    want = -(-2 * num_sms // max(batch * kv_heads, 1))
    most = -(-max_context // MIN_SPLIT_TOKENS)
    return max(1, min(want, most, MAX_SPLITS))


def decode_workspace(batch: int, heads: int, num_splits: int, head_dim: int,
                     device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 partial outputs [batch, heads, splits, head_dim] and their log2-sum-exp [batch, heads, splits]."""
    parts = torch.empty(batch, heads, num_splits, head_dim, dtype=torch.float32, device=device)
    return parts, torch.empty(batch, heads, num_splits, dtype=torch.float32, device=device)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float, block_size: int, *, out: torch.Tensor | None = None,
                     num_splits: int | None = None, workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
                     new: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                     rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                     planes: tuple[Planes, int] | None = None) -> torch.Tensor:
    """Attention of one query per sequence over its paged K/V.

    q [B, heads, head_dim] (rows may be strided, head_dim contiguous); k_cache/v_cache one layer's slabs
    [kv_heads, num_blocks * block_size, head_dim]; block_tables [B, max_blocks] int32; seq_lens [B] int32
    (0 for padded rows, whose output is zeros). Returns out [B, heads, head_dim] in q's dtype.
    `workspace` (from `decode_workspace`, sized for B and num_splits) keeps the call allocation-free.
    `new = (k, v, slots)`: this step's keys and values [B, kv_heads, head_dim] (head_dim contiguous) and their
    cache slots [B] (below 0: none), written into the cache first (the position seq_len - 1 of each row).
    `rotary = (cos, sin)` [B, head_dim]: q and the new keys are not yet rotated; the kernel rotates them (row b by
    row b) as the rotary kernel would. `planes = ((planes, scales, sums), group)`: also write the INT4 activation
    planes of out viewed as [B, heads * head_dim] (contiguous), in weight groups of `group`, which must divide
    head_dim; one split runs no merge kernel, so it cannot write them (a clear error).
    """
    batch, heads, head_dim = q.shape
    kv_heads = k_cache.shape[0]
    _check_layout(q, k_cache, v_cache, heads, head_dim, block_size)
    out = torch.empty_like(q) if out is None else out
    if batch == 0:
        return out
    if num_splits is None:
        num_splits = default_num_splits(batch, kv_heads, block_tables.shape[1] * block_size, sm_count(q.device))
    direct = num_splits == 1
    if direct:
        parts = lse = out  # unused by the kernel when DIRECT
    else:
        parts, lse = workspace if workspace is not None else decode_workspace(
            batch, heads, num_splits, head_dim, q.device)
        if parts.shape != (batch, heads, num_splits, head_dim) or lse.shape != (batch, heads, num_splits):
            raise ValueError(f"decode workspace {tuple(parts.shape)} does not fit {(batch, heads, num_splits)}")
    group = heads // kv_heads
    pdl, launch = pdl_launch(q)
    _check_fusions(q, out, new, rotary, planes, direct)
    cos, sin = rotary if rotary is not None else (q, q)  # (unread without ROTARY)
    k_new, v_new, slots = new if new is not None else (q, q, seq_lens)  # (unread without STORE_NEW)
    if new is not None and (k_new.shape != (batch, kv_heads, head_dim) or v_new.shape != k_new.shape
                            or k_new.stride(2) != 1 or v_new.stride(2) != 1 or slots.shape[0] < batch):
        raise ValueError(f"decode_attention: new keys {tuple(k_new.shape)} / values {tuple(v_new.shape)} / slots "
                         f"{tuple(slots.shape)} do not fit {batch} rows of {kv_heads} x {head_dim}")
    _decode_split_kernel[(batch, kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, out, parts, lse, scale * LOG2E, num_splits,
        q.stride(0), q.stride(1), k_cache.stride(0), v_cache.stride(0), block_tables.stride(0),
        out.stride(0), out.stride(1), k_new, v_new, slots, k_new.stride(0), k_new.stride(1), v_new.stride(0),
        v_new.stride(1), cos, sin, cos.stride(0), sin.stride(0), STORE_NEW=new is not None, ROTARY=rotary is not None,
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, PAGE=block_size,
        BLOCK_N=BLOCK_N, DIRECT=direct, PRECISION=dot_precision(k_cache.dtype),
        PDL=pdl, num_warps=NUM_WARPS, num_stages=NUM_STAGES, **launch)
    if not direct:
        (p_planes, p_scales, p_sums), slice_ = planes if planes is not None else ((out, out, out), head_dim)
        _decode_merge_kernel[(batch, heads, head_dim // slice_)](
            parts, lse, out, p_planes, p_scales, p_sums, num_splits, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, SLICE=slice_, BLOCK_S=triton.next_power_of_2(num_splits), PLANES=planes is not None,
            PDL=pdl, num_warps=4, **launch)
    return out


def _check_fusions(q: torch.Tensor, out: torch.Tensor, new: tuple | None, rotary: tuple | None,
                   planes: tuple | None, direct: bool) -> None:
    batch, heads, head_dim = q.shape
    if rotary is not None:
        cos, sin = rotary
        if new is None:
            raise ValueError("decode_attention: rotary needs the step's keys (`new`), rotated as they are stored")
        if cos.shape != (batch, head_dim) or sin.shape != cos.shape or cos.stride(1) != 1 or sin.stride(1) != 1:
            raise ValueError(f"decode_attention: cos/sin {tuple(cos.shape)} must be [{batch}, {head_dim}] rows "
                             f"with contiguous columns")
    if planes is not None:
        (p_planes, _, p_sums), group = planes
        width = heads * head_dim
        if direct:
            raise ValueError("decode_attention: one split writes no planes (no merge kernel runs)")
        if group < 32 or group & (group - 1) or head_dim % group:
            raise ValueError(f"decode_attention: planes in groups of {group} must be a power of two of at least 32 "
                             f"dividing head_dim {head_dim}")
        fits = p_planes.shape == (batch, width // 8, 4) and p_sums.shape == (batch, width // group)
        if not out.is_contiguous() or not fits:
            raise ValueError(f"decode_attention: planes {tuple(p_planes.shape)} do not fit a contiguous output of "
                             f"{batch} rows of {width} in groups of {group}")


def _check_layout(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int, head_dim: int,
                  block_size: int) -> None:
    """The kernels address slots as `slot * head_dim` and need power-of-two tiles."""
    kv_heads = k_cache.shape[0]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not split evenly over {kv_heads} KV heads")
    if head_dim & (head_dim - 1) or not 16 <= head_dim <= 256:
        raise ValueError(f"head_dim {head_dim} is not a power of two in [16, 256]")
    if block_size & (block_size - 1) or block_size < 8:
        raise ValueError(f"block_size {block_size} is not a power of two >= 8")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.shape[2] != head_dim or t.stride(2) != 1 or t.stride(1) != head_dim:
            raise ValueError(f"{name} must be a [kv_heads, slots, {head_dim}] slab with contiguous slots")
    if q.stride(-1) != 1:
        raise ValueError("q's head_dim must be contiguous")


def gather_sequence(cache: torch.Tensor, table_row: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """A sequence's first `length` cached tokens [kv_heads, length, head_dim], gathered slot by slot."""
    pos = torch.arange(length, device=cache.device)
    slots = table_row[pos // block_size].long() * block_size + pos % block_size  # [length]
    return cache[:, slots]


def decode_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                               block_size: int) -> torch.Tensor:
    """Pure-torch float32 decode_attention, one sequence at a time (the oracle for the kernel)."""
    _, heads, head_dim = q.shape
    kv_heads = k_cache.shape[0]
    out = torch.zeros_like(q)
    for b, length in enumerate(seq_lens.tolist()):
        if length == 0:
            continue
        keys = gather_sequence(k_cache, block_tables[b], length, block_size).float()  # [kv_heads, n, d]
        values = gather_sequence(v_cache, block_tables[b], length, block_size).float()
        query = q[b].float().view(kv_heads, heads // kv_heads, head_dim)  # [kv_heads, group, d]
        probs = torch.softmax(query @ keys.transpose(1, 2) * scale, dim=-1)  # [kv_heads, group, n]
        out[b] = (probs @ values).reshape(heads, head_dim).to(q.dtype)
    return out


def decode_bytes(seq_lens: torch.Tensor, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K+V bytes a decode step must read (for achieved-bandwidth figures)."""
    return int(seq_lens.sum()) * kv_heads * head_dim * 2 * torch.finfo(dtype).bits // 8

