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
