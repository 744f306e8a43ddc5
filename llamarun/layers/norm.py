"""RMSNorm, computed in float32 like the reference implementations so low-precision weights agree."""

from __future__ import annotations

import torch
from torch import nn

from llamarun.layers.fused import add_rms_norm


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, with the statistic taken in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, feeds: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): decoder layers pass the residual stream through, so the add
        and the norm can be one kernel on GPUs. With no residual: (norm(x), x). `feeds`, the linear that
        reads the norm, may have the norm kernel prepare its input (`layers.fused.add_rms_norm`)."""
        return add_rms_norm(x, residual, self.weight, self.eps, feeds)
