"""q/k row order between Meta's interleaved rotary layout (also GGUF's) and Hugging Face's half-split one.

Meta's reference rotates pairs of adjacent dimensions (complex multiply); HF's rotates the first
half against the second. The HF converter reorders q/k rows so both compute the same thing, and
llama.cpp's converter undoes that. Loading GGUF or Meta weights therefore applies the HF reorder.
"""

from __future__ import annotations

import torch


def interleaved_to_half_split(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder rows [heads * head_dim, ...] from pairwise (Meta/GGUF) to half-split (HF) layout."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    rest = weight.shape[1:]
    w = weight.reshape(num_heads, head_dim // 2, 2, *rest)  # [heads, pairs, 2, ...]
    return w.transpose(1, 2).reshape(rows, *rest)


def half_split_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_half_split` (used by tests and writers)."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    rest = weight.shape[1:]
    w = weight.reshape(num_heads, 2, head_dim // 2, *rest)  # [heads, 2, pairs, ...]
    return w.transpose(1, 2).reshape(rows, *rest)
