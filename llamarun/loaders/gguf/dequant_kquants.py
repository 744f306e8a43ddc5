"""Dequantize the 256-weight K-quant super-blocks of GGML: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Every function takes `blocks`, a [n_blocks, type_size] uint8 tensor, and returns [n_blocks, 256]
float32, all super-blocks at once. Sub-block scales are combined with the super-block scale first
and the weights are scaled after, the same order of float32 operations as the gguf package's
reference, so results are bit-identical to it.
"""

from __future__ import annotations

import torch

from llamarun.loaders.gguf.dequant_legacy import half_at, split_nibbles, unpack_bits

_CRUMB_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(4, 1)  # 2-bit fields of a byte


def _crumbs(packed: torch.Tensor, width: int) -> torch.Tensor:
    """[n, k] bytes -> [n, k // width, 4, width] 2-bit values: for each run of `width` bytes, the
    bits 0-1 of all of them, then bits 2-3, and so on."""
    runs = packed.unflatten(-1, (-1, 1, width))  # [n, k // width, 1, width]
    return (runs >> _CRUMB_SHIFTS) & 3


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte field of Q4_K/Q5_K into 8 six-bit scales and 8 six-bit minimums.

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same for
    the minimums; bytes 8-11 hold the low 4 bits of scale 4-7 (low nibble) and minimum 4-7 (high).
    """
    sc_lo, mn_lo, both_hi = scales.unflatten(-1, (3, 4)).unbind(1)  # each [n, 4]
    sc = torch.cat((sc_lo & 0x3F, (both_hi & 0x0F) | ((sc_lo >> 2) & 0x30)), dim=-1)  # [n, 8]
    mn = torch.cat((mn_lo & 0x3F, (both_hi >> 4) | ((mn_lo >> 2) & 0x30)), dim=-1)  # [n, 8]
    return sc, mn


def dequant_q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_K: d, dmin (fp16), 12 bytes of 6-bit scales/mins, 8 sub-blocks of 32 4-bit weights."""
    n = blocks.shape[0]
    d, dmin = half_at(blocks, 0), half_at(blocks, 2)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    d_sub = (d * sc).unsqueeze(-1)  # [n, 8, 1]
    m_sub = (dmin * mn).unsqueeze(-1)  # [n, 8, 1]
    q = split_nibbles(blocks[:, 16:].unflatten(-1, (4, 32)))  # [n, 4, 64]: pairs of sub-blocks
    return torch.mul(q.view(n, 8, 32), d_sub).sub_(m_sub).view(n, 256)


def dequant_q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_K: as Q4_K plus a 32-byte bit plane; bit i of byte j is the 5th bit of sub-block i's j-th weight."""
    n = blocks.shape[0]
    d, dmin = half_at(blocks, 0), half_at(blocks, 2)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    d_sub = (d * sc).unsqueeze(-1)  # [n, 8, 1]
    m_sub = (dmin * mn).unsqueeze(-1)  # [n, 8, 1]
    low = split_nibbles(blocks[:, 48:].unflatten(-1, (4, 32))).view(n, 8, 32)
    high = unpack_bits(blocks[:, 16:48]).view(n, 32, 8).transpose(1, 2)  # [n, 8, 32]
    q = low | (high << 4)
    return torch.mul(q, d_sub).sub_(m_sub).view(n, 256)


def dequant_q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q6_K: 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, fp16 d; 16 sub-blocks of 16."""
    n = blocks.shape[0]
    d = half_at(blocks, 208)
    scales = blocks[:, 192:208].view(torch.int8)  # [n, 16]
    d_sub = (d * scales).unsqueeze(-1)  # [n, 16, 1]
    low = split_nibbles(blocks[:, :128].unflatten(-1, (2, 64)))  # [n, 2, 128]
    high = _crumbs(blocks[:, 128:192], 32)  # [n, 2, 4, 32]
    q = (low.view(n, 8, 32) | (high.view(n, 8, 32) << 4)).view(torch.int8) - 32
    return torch.mul(q.view(n, 16, 16), d_sub).view(n, 256)


def dequant_q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q2_K: 16 bytes of 4-bit scale/min pairs, 64 bytes of 2-bit weights, fp16 d and dmin."""
    n = blocks.shape[0]
    scales = blocks[:, :16]
    d, dmin = half_at(blocks, 80), half_at(blocks, 82)
    d_sub = (d * (scales & 0x0F)).unsqueeze(-1)  # [n, 16, 1]
    m_sub = (dmin * (scales >> 4)).unsqueeze(-1)  # [n, 16, 1]
    q = _crumbs(blocks[:, 16:80], 32).view(n, 16, 16)
    return torch.mul(q, d_sub).sub_(m_sub).view(n, 256)


def dequant_q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q3_K: 32-byte high-bit mask, 64 bytes of 2-bit weights, 12 bytes of 6-bit scales, fp16 d."""
    n = blocks.shape[0]
    d = half_at(blocks, 108)
    packed = blocks[:, 96:108]
    lo = split_nibbles(packed[:, :8])  # [n, 16]: low 4 bits of the 16 scales
    hi = _crumbs(packed[:, 8:12], 4).view(n, 16)  # [n, 16]: their top 2 bits
    scales = (lo | (hi << 4)).view(torch.int8) - 32
    d_sub = (d * scales).unsqueeze(-1)  # [n, 16, 1]
    low = _crumbs(blocks[:, 32:96], 32).view(n, 16, 16)
    # a set mask bit means "no offset"; a clear one subtracts 4
    high = unpack_bits(blocks[:, :32]).view(n, 32, 8).transpose(1, 2).reshape(n, 16, 16)
    q = low.view(torch.int8) - ((high ^ 1) << 2).view(torch.int8)
    return torch.mul(q, d_sub).view(n, 256)
