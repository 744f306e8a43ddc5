"""One K/V tile of the paged cache folded into an online softmax: the inner step of both attention kernels.

A tile is BLOCK_N consecutive token positions of one sequence. Each position's slot comes from the
block table (`page * PAGE + offset`); with the default 16-token pages and 64-token tiles a tile is four
whole pages. Every slot is a row of HEAD_DIM contiguous elements, so K/V rows load as 16-byte vectors.
Scores are kept in the log2 domain (`qk_scale` already holds log2(e)) so the softmax uses exp2.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_tile(q, m, denom, acc, k_base, v_base, table_row, start, kv_end, q_pos, qk_scale,
                PAGE: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Fold keys/values at positions [start, start + BLOCK_N) into (m, denom, acc).

    q [ROWS, HEAD_DIM] (a row per query head and query token); m, denom [ROWS] running max (log2 units)
    and denominator; acc [ROWS, HEAD_DIM] float32 unnormalised output. MASKED drops positions at or
    past `kv_end`; CAUSAL drops keys after each row's own position `q_pos` [ROWS]. Unmasked tiles
    skip all masking work, which is most tiles of a long context.
    """
    tokens = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] positions in the sequence
    dims = tl.arange(0, HEAD_DIM)
    in_range = tokens < kv_end
    if MASKED:
        page = tl.load(table_row + tokens // PAGE, mask=in_range, other=0)
    else:
        page = tl.load(table_row + tokens // PAGE)
    rows = (page.to(tl.int64) * PAGE + tokens % PAGE)[:, None] * HEAD_DIM + dims[None, :]  # [BLOCK_N, D]
    k = tl.load(k_base + rows, mask=in_range[:, None], other=0.0) if MASKED else tl.load(k_base + rows)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [ROWS, BLOCK_N]
    if CAUSAL:
        keep = tokens[None, :] <= q_pos[:, None]
        if MASKED:
            keep = keep & in_range[None, :]
        s = tl.where(keep, s, float("-inf"))
    elif MASKED:
        s = tl.where(in_range[None, :], s, float("-inf"))
    # Every caller's first tile gives each row at least one live key, so m_new is finite from then on.
    m_new = tl.maximum(m, tl.max(s, 1))
    alpha = tl.exp2(m - m_new)  # rescales what was summed under the old max
    p = tl.exp2(s - m_new[:, None])  # [ROWS, BLOCK_N]
    denom = denom * alpha + tl.sum(p, 1)
    v = tl.load(v_base + rows, mask=in_range[:, None], other=0.0) if MASKED else tl.load(v_base + rows)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, denom, acc


def dot_precision(dtype) -> str:
    """Exact float32 products for float32 caches (tests, CPU parity); tf32 is irrelevant for 16-bit inputs."""
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"
