"""Dequantize the 32-weight block types of GGML: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Every function takes `blocks`, a [n_blocks, type_size] uint8 tensor, and returns [n_blocks, 32]
float32. The arithmetic follows the gguf package's reference order operation by operation (one
float32 rounding per step, no fused multiply-add), so results are bit-identical to it.
"""

from __future__ import annotations

import torch

_NIBBLE = 0x0F
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)  # bit i of a byte -> position i


def half_at(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 field at byte `start` of every block, as float32 of shape [n_blocks, 1]."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def split_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 2k] values: all low nibbles first, then all high nibbles (GGML's order)."""
    return torch.cat((qs & _NIBBLE, qs >> 4), dim=-1)


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 8k] single bits, least significant bit first (a little-endian bit field)."""
    bits = (packed.unsqueeze(-1) >> _BIT_SHIFTS) & 1  # [n, k, 8]
    return bits.flatten(-2)


def dequant_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q8_0: fp16 scale d, 32 int8 weights; w = q * d."""
    d = half_at(blocks, 0)  # [n, 1]
    q = blocks[:, 2:].view(torch.int8)  # [n, 32]
    return torch.mul(q, d)


def dequant_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_0: fp16 scale d, 32 4-bit weights; w = d * (q - 8)."""
    d = half_at(blocks, 0)
    q = split_nibbles(blocks[:, 2:]).view(torch.int8) - 8  # [n, 32], values -8..7
    return torch.mul(q, d)


def dequant_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_1: fp16 scale d and minimum m, 32 4-bit weights; w = d * q + m."""
    d, m = half_at(blocks, 0), half_at(blocks, 2)
    q = split_nibbles(blocks[:, 4:])  # [n, 32] uint8
    return torch.mul(q, d).add_(m)


def _five_bit(blocks: torch.Tensor, qh_at: int) -> torch.Tensor:
    # 4 low bits from the nibbles, the 5th bit of weight j is bit j of a little-endian u32
    low = split_nibbles(blocks[:, qh_at + 4 :])  # [n, 32]
    high = unpack_bits(blocks[:, qh_at : qh_at + 4])  # [n, 32]
    return low | (high << 4)


def dequant_q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_0: fp16 scale d, 32 5-bit weights split into nibbles and a bit plane; w = d * (q - 16)."""
    d = half_at(blocks, 0)
    q = _five_bit(blocks, 2).view(torch.int8) - 16
    return torch.mul(q, d)


def dequant_q5_1(blocks: torch.Tensor) -> torch.Tensor:
    """Q5_1: fp16 scale d and minimum m, 32 5-bit weights; w = d * q + m."""
    d, m = half_at(blocks, 0), half_at(blocks, 2)
    q = _five_bit(blocks, 4)
    return torch.mul(q, d).add_(m)
