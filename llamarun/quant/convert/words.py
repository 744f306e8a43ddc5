"""Eight 4-bit values in an int32 word, value j at bits 4j..4j+3 (the packing AWQ, GPTQ and
compressed-tensors all start from; AWQ then shuffles which column goes to which j)."""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)  # [8]


def unpack_int32_nibbles(words: torch.Tensor) -> torch.Tensor:
    """[R, W] int32 -> [R, W * 8] uint8 values 0..15, value j of word w at column 8w + j."""
    if words.dtype != torch.int32 or words.dim() != 2:
        raise TypeError(f"expected 2-D int32 words, got {words.dim()}-D {words.dtype}")
    values = (words.unsqueeze(-1) >> _SHIFTS) & 0xF  # [R, W, 8]; & drops the sign bits the shift copies
    return values.to(torch.uint8).reshape(words.shape[0], -1)
