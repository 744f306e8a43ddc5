"""The attention backend seam.

The model knows nothing about caches or batching: each attention layer hands its q/k/v to the
backend that the runner made current for this forward pass. A backend owns the KV cache layout
(contiguous today, paged for the batched engine) and the kernel choice (torch SDPA on CPU,
Triton on GPU), so swapping it never touches models/llama.py.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class AttentionBackend(ABC):
    """Stores this step's keys/values and attends over everything cached for the sequence(s)."""

    @abstractmethod
    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [tokens, heads, head_dim], k/v [tokens, kv_heads, head_dim] -> [tokens, heads, head_dim]."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, feeds: torch.nn.Module | None = None) -> torch.Tensor:
        """What the model calls: q and k not yet rotated (cos/sin [tokens, head_dim]) -> the attention output as
        [tokens, heads * head_dim], the input of `feeds` (the output projection).

        Here: rotate, then `forward`. A backend whose kernels can take over the rotation, or write what `feeds`
        would first make of its input (INT4 planes), overrides this (paged_triton.py): fewer launches a step.
        """
        from llamarun.layers.fused import rotate

        q, k = rotate(q, k, cos, sin)
        out = self.forward(layer, q, k, v)
        return out.reshape(out.shape[0], -1)


_state = threading.local()


@contextmanager
def use_backend(backend: AttentionBackend) -> Iterator[AttentionBackend]:
    """Make `backend` the one attention layers use for the forward passes inside the block."""
    previous = getattr(_state, "backend", None)
    _state.backend = backend
    try:
        yield backend
    finally:
        _state.backend = previous


def current_backend() -> AttentionBackend:
    backend = getattr(_state, "backend", None)
    if backend is None:
        raise RuntimeError("no attention backend is set; run the model inside `use_backend(...)`")
    return backend
