"""Causal flash attention for prefill chunks over the paged KV cache (chunked prefill included).

Sequence b's queries are packed rows [query_start[b], query_start[b + 1]) and are the LAST q_len of
its seq_lens[b] tokens: a cached prefix, then this chunk, whose keys/values are already in the
cache. Program (query tile, sequence, kv head) stacks BLOCK_Q query tokens times the GQA group into
one [BLOCK_Q * group, head_dim] tile, so every K/V tile is loaded once for the whole group. Keys
before the tile's first query position are visible to every row and run unmasked; only the
diagonal tiles pay for the causal mask. The grid uses the host's max_query_len: prefill steps are
not graph-captured.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llamarun.kernels.attention_tile import attend_tile, dot_precision
from llamarun.kernels.decode_attention import LOG2E, _check_layout, gather_sequence

# Tuning from benchmarks/gpu_kernels_sweep.py on an H200 (8B shapes): 64-row tiles, 4 warps, 3 stages led at
# 1x512, 4x2048 and 4x2048 after a 2048-token prefix (127 / 307 / 354 TFLOP/s against 122 / 274 / 324 for
# 128 rows, 8 warps, 2 stages). BLOCK_N and the launch numbers are read at call time, so the sweep can vary them.
BLOCK_M = 64  # query rows (tokens x group heads) per program
BLOCK_N = 64  # keys per tile
NUM_WARPS, NUM_STAGES = 4, 3


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, seq_lens_ptr, query_start_ptr, first_seq, qk_scale,
                    stride_qt, stride_qh, stride_ot, stride_oh, stride_kh, stride_vh, stride_tb,
                    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr, HEAD_DIM: tl.constexpr,
                    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    # Last query tiles first: they see the most keys, so the long programs start early.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    seq = first_seq + tl.program_id(1)
    kv_head = tl.program_id(2)
    q_begin = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_begin
    if tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    first_pos = seq_len - q_len + tile * BLOCK_Q  # position of the tile's first query in its sequence

    rows = tl.arange(0, BLOCK_Q * BLOCK_G)
    dims = tl.arange(0, HEAD_DIM)
    q_idx = tile * BLOCK_Q + rows // BLOCK_G  # [ROWS] query index within the chunk
    groups = rows % BLOCK_G
    heads = kv_head * GROUP + groups
    live = (q_idx < q_len) & (groups < GROUP)
    tokens = (q_begin + q_idx).to(tl.int64)  # packed row of each query
    q = tl.load(q_ptr + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=live[:, None], other=0.0)  # [ROWS, HEAD_DIM]
    q_pos = first_pos + rows // BLOCK_G  # [ROWS]

    m = tl.full([BLOCK_Q * BLOCK_G], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_Q * BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_Q * BLOCK_G, HEAD_DIM], tl.float32)
    k_base = k_ptr + kv_head.to(tl.int64) * stride_kh
    v_base = v_ptr + kv_head.to(tl.int64) * stride_vh
    table_row = tables_ptr + seq.to(tl.int64) * stride_tb
    kv_end = tl.minimum(seq_len, first_pos + BLOCK_Q)  # the tile's last query sees keys up to here
    full_end = tl.maximum(first_pos, 0) // BLOCK_N * BLOCK_N  # keys every row of the tile sees
    for start in range(0, full_end, BLOCK_N):
        m, denom, acc = attend_tile(q, m, denom, acc, k_base, v_base, table_row, start, kv_end, q_pos, qk_scale,
                                PAGE, BLOCK_N, HEAD_DIM, False, False, PRECISION)
    for start in range(full_end, kv_end, BLOCK_N):
        m, denom, acc = attend_tile(q, m, denom, acc, k_base, v_base, table_row, start, kv_end, q_pos, qk_scale,
                                PAGE, BLOCK_N, HEAD_DIM, True, True, PRECISION)
    result = acc / tl.where(denom > 0, denom, 1.0)[:, None]  # zeros for a row with no keys (bad padding)
    dst = out_ptr + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    tl.store(dst, result.to(out_ptr.dtype.element_ty), mask=live[:, None])


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      seq_lens: torch.Tensor, query_start: torch.Tensor, scale: float, block_size: int,
                      max_query_len: int, *, first_seq: int = 0, out: torch.Tensor | None = None,
                      block_m: int = BLOCK_M) -> torch.Tensor:
    """Causal attention of packed query chunks over their sequences' paged K/V.

    q [T, heads, head_dim]; k_cache/v_cache [kv_heads, slots, head_dim]; block_tables [B, max_blocks] int32;
    seq_lens [B] int32; query_start [B + 1] int32. Sequences [first_seq, B) are attended (earlier ones,
    the decodes, are left to the decode kernel); `max_query_len` bounds their q_len and sizes the grid.
    Writes their rows of `out` [T, heads, head_dim] (allocated if None) and returns it. `block_m`
    (query rows per program, a power of two >= 16) exists so tests can cover many tiles at small shapes.
    """
    tokens, heads, head_dim = q.shape
    kv_heads = k_cache.shape[0]
    _check_layout(q, k_cache, v_cache, heads, head_dim, block_size)
    out = torch.empty_like(q) if out is None else out
    num_seqs = seq_lens.shape[0] - first_seq
    if tokens == 0 or num_seqs <= 0 or max_query_len <= 0:
        return out
    group = heads // kv_heads
    block_g = triton.next_power_of_2(group)
    block_q = max(1, block_m // block_g)
    grid = (triton.cdiv(max_query_len, block_q), num_seqs, kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, seq_lens, query_start, first_seq, scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(0), v_cache.stride(0),
        block_tables.stride(0),
        GROUP=group, BLOCK_G=block_g, BLOCK_Q=block_q, HEAD_DIM=head_dim, PAGE=block_size, BLOCK_N=BLOCK_N,
        PRECISION=dot_precision(k_cache.dtype), num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out


def prefill_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start: torch.Tensor,
                                scale: float, block_size: int, first_seq: int = 0) -> torch.Tensor:
    """Pure-torch float32 prefill_attention, one sequence at a time; rows it does not own stay zero."""
    _, heads, head_dim = q.shape
    kv_heads = k_cache.shape[0]
    out = torch.zeros_like(q)
    starts = query_start.tolist()
    for b in range(first_seq, seq_lens.shape[0]):
        length, q0, q1 = int(seq_lens[b]), starts[b], starts[b + 1]
        if q1 == q0 or length == 0:
            continue
        keys = gather_sequence(k_cache, block_tables[b], length, block_size).float()  # [kv_heads, n, d]
        values = gather_sequence(v_cache, block_tables[b], length, block_size).float()
        query = q[q0:q1].float().transpose(0, 1).reshape(kv_heads, -1, head_dim)  # [kv_heads, group*q_len, d]
        scores = (query @ keys.transpose(1, 2) * scale).view(kv_heads, heads // kv_heads, q1 - q0, length)
        pos = torch.arange(length - (q1 - q0), length, device=q.device)[:, None]  # [q_len, 1] query positions
        visible = torch.arange(length, device=q.device)[None, :] <= pos  # [q_len, n]
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).view(kv_heads, -1, length)
        out[q0:q1] = (probs @ values).view(heads, q1 - q0, head_dim).transpose(0, 1).to(q.dtype)
    return out
