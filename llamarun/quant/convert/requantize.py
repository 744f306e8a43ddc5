"""Re-quantize a float weight to int8 per output channel with the smallest error we can find cheaply.

Used where a file's layout has no exact twin among ours (GGUF Q8_0's scale per 32 weights, Q5/Q6_K,
MLX 8-bit groups with biases). The plain choice, scale = max|w| / 127, wastes range on outliers.
Instead each row alternates two steps that can only lower its squared error: round w / scale to the
nearest int8 (the best q for that scale), then set scale = <w, q> / <q, q> (the best scale for that
q, by least squares). Starting from max|w| / 127, it is never worse than the plain choice.
"""

from __future__ import annotations

import torch

from llamarun.quant.layouts import Int8Weight

_ROUNDS = 3  # the error stops moving after two or three rounds on real weights


def _round(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale[:, None]), -127, 127)  # [N, K]


def int8_per_channel(w: torch.Tensor) -> tuple[Int8Weight, float]:
    """[N, K] float weight -> (Int8Weight, relative RMS error ||w' - w|| / ||w||)."""
    w = w.float()
    absmax = w.abs().amax(dim=1)  # [N]
    scale = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax))  # [N]
    for _ in range(_ROUNDS):
        q = _round(w, scale)  # [N, K]
        qq, wq = (q * q).sum(dim=1), (w * q).sum(dim=1)  # [N]
        scale = torch.where((qq > 0) & (wq > 0), wq / qq.clamp(min=1), scale)  # [N]
    q = _round(w, scale)
    packed = Int8Weight(q.to(torch.int8), scale)
    norm = float(w.norm())
    error = float((q * scale[:, None] - w).norm()) / norm if norm > 0 else 0.0
    return packed, error
