"""Rotary position embeddings in Hugging Face's half-split layout, with Llama 3.1 `llama3` scaling.

GGUF and Meta checkpoints store q/k rows interleaved for the complex-number form of rotary; the
loaders re-permute them (loaders/permute.py) so that one implementation serves every format.
"""

from __future__ import annotations

import torch
from torch import nn

from llamarun.config import ModelConfig, base_inv_freq


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair inverse frequencies [head_dim/2], scaling applied, in float64 for exactness."""
    inv = base_inv_freq(config.rope_theta, config.head_dim)
    if config.rope_scaling is not None:
        inv = config.rope_scaling.scale(inv)
    out = torch.tensor(inv, dtype=torch.float64)
    if config.rope_freq_factors is not None:
        out = out / torch.tensor(config.rope_freq_factors, dtype=torch.float64)
    return out


class RotaryEmbedding(nn.Module):
    """Computes cos/sin for given positions on the fly: no table sized by the 128k context."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # float32 like HF: the reference rounds inv_freq to float32 before multiplying by positions.
        self.register_buffer("inv_freq", inverse_frequencies(config).float(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [tokens, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [tokens, head_dim]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [tokens, heads, head_dim] by cos/sin [tokens, head_dim] (torch; layers.fused.rotate picks kernels)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # [tokens, heads, head_dim]
    return x * cos[:, None, :] + rotated * sin[:, None, :]
