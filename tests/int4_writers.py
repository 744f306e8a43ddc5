"""AWQ and GPTQ tensors written as their formats define them, with a reference dequantization from the
documented formula, both from the same plain integers (so neither leans on llamarun's converters).

AutoAWQ (GEMM): qweight int32 [K, N/8], nibble j of word c holds column 8c + (0, 2, 4, 6, 1, 3, 5, 7)[j];
qzeros int32 [K/G, N/8] the same way; scales [K/G, N]; w[k, n] = (q - z[k // G, n]) * s[k // G, n].
GPTQ: qweight int32 [K/8, N], nibble j of word r holds row 8r + j; qzeros [K/G, N/8], nibble j of word c
holds column 8c + j, storing z - 1 ("gptq") or z ("gptq_v2"); scales [K/G, N]; g_idx [K].
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words holding 32-bit patterns -> int32 with the same bits."""
    return (words & 0xFFFFFFFF).to(torch.uint32).view(torch.int32) if hasattr(torch, "uint32") else \
        torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_columns(values: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """[R, C] ints 0..15 -> [R, C/8] int32, nibble j of word c holding column 8c + order[j]."""
    v = values.to(torch.int64).view(values.shape[0], -1, 8)  # [R, C/8, 8]
    words = torch.zeros(v.shape[:2], dtype=torch.int64)
    for j, col in enumerate(order):
        words |= v[..., col] << (4 * j)
    return _to_int32(words)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[K, N] ints 0..15 -> [K/8, N] int32, nibble j of word r holding row 8r + j."""
    return pack_columns(values.t().contiguous()).t().contiguous()


def random_int4(n: int, k: int, group: int, seed: int = 0):
    """Plain integers of an int4 weight: q [K, N], zeros [K/G, N] (0..15) and fp16 scales [K/G, N]."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen)
    zeros = torch.randint(0, 16, (k // group, n), generator=gen)
    scales = (torch.rand(k // group, n, generator=gen) * 0.02 + 0.001).half()
    return q, zeros, scales


def reference_weight(q, zeros, scales, g_idx) -> torch.Tensor:
    """The documented formula, [N, K] float32: w[k, n] = (q[k, n] - z[g[k], n]) * s[g[k], n]."""
    return ((q.float() - zeros.float()[g_idx]) * scales.float()[g_idx]).t()


def awq_tensors(q, zeros, scales) -> dict[str, torch.Tensor]:
    return {"qweight": pack_columns(q, AWQ_ORDER), "qzeros": pack_columns(zeros, AWQ_ORDER), "scales": scales}


def gptq_tensors(q, zeros, scales, g_idx, v1: bool = True) -> dict[str, torch.Tensor]:
    stored = (zeros - 1) & 0xF if v1 else zeros  # v1 keeps z - 1 in four bits
    return {"qweight": pack_rows(q), "qzeros": pack_columns(stored), "scales": scales,
            "g_idx": g_idx.to(torch.int32)}
