"""Re-quantize a float weight to int8 per output channel with the smallest error we can find cheaply.

Used where a file's layout has no exact twin among ours (GGUF Q8_0's scale per 32 weights, Q5/Q6_K,
MLX 8-bit groups with biases). The plain choice, scale = max|w| / 127, wastes range on one outlier;
instead a few scales between 0.8x and 1x of it are tried per row and the one with the least squared
error kept (the search llama.cpp's quantizers do per block, here per row).
"""

from __future__ import annotations

import torch

from llamarun.quant.layouts import Int8Weight

_SHRINK = torch.linspace(0.80, 1.0, 21).tolist()  # candidate scales, as fractions of max|w| / 127


def int8_per_channel(w: torch.Tensor) -> tuple[Int8Weight, float]:
    """[N, K] float weight -> (Int8Weight, relative RMS error ||w' - w|| / ||w||)."""
    w = w.float()
    absmax = w.abs().amax(dim=1)  # [N]
    base = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))  # [N]
    best_err = torch.full_like(absmax, float("inf"))  # [N]
    best_scale = base.clone()
    for shrink in _SHRINK:
        scale = base * shrink  # [N]
        q = torch.clamp(torch.round(w / scale[:, None]), -127, 127)  # [N, K]
        err = ((q * scale[:, None] - w) ** 2).sum(dim=1)  # [N]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
    q = torch.clamp(torch.round(w / best_scale[:, None]), -127, 127).to(torch.int8)  # [N, K]
    packed = Int8Weight(q, best_scale)
    norm = float(w.norm())
    error = float((q.float() * best_scale[:, None] - w).norm()) / norm if norm > 0 else 0.0
    return packed, error
