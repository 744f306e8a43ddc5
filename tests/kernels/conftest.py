"""Kernel tests: on a CUDA machine the kernels run compiled in bf16; elsewhere Triton's interpreter runs them on
the CPU in float32 at small shapes. Without Triton the whole folder is skipped.

TRITON_INTERPRET must be set before anything imports triton (its `jit` decorator reads it), so it is set here,
at conftest import, before pytest imports the test modules that import the kernels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

try:
    import triton  # noqa: F401  (after TRITON_INTERPRET is set)
except ImportError:  # not installed, or no build for this platform: nothing here can run
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def device() -> str:
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def dtype() -> torch.dtype:
    """bf16 on a GPU (what serving runs); float32 in the interpreter (exact enough to catch indexing slips)."""
    return torch.bfloat16 if HAS_CUDA else torch.float32


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Elementwise agreement at the precision of the dtype."""
    tol = 2e-2 if actual.dtype in (torch.bfloat16, torch.float16) else 2e-5
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


@dataclass
class PagedCache:
    """One layer's slabs with random contents (unused slots too, so a stray read shows) and block tables."""

    k: torch.Tensor  # [kv_heads, num_blocks * block_size, head_dim]
    v: torch.Tensor
    block_tables: torch.Tensor  # [B, max_blocks] int32; unused entries point past the cache
    seq_lens: torch.Tensor  # [B] int32
    block_size: int


def make_paged_cache(lengths: list[int], kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
                     device: str, seed: int = 0) -> PagedCache:
    """Sequences of `lengths` tokens over shuffled block ids, with two spare blocks nobody owns."""
    gen = torch.Generator().manual_seed(seed)
    needs = [-(-n // block_size) for n in lengths]
    num_blocks = sum(needs) + 2
    order = torch.randperm(num_blocks, generator=gen).tolist()
    width = max(needs) + 1
    tables = torch.full((len(lengths), width), num_blocks + 1000, dtype=torch.int32)
    for b, need in enumerate(needs):
        tables[b, :need] = torch.tensor(order[:need], dtype=torch.int32)
        order = order[need:]
    shape = (kv_heads, num_blocks * block_size, head_dim)
    k = torch.randn(shape, generator=gen).to(dtype)
    v = torch.randn(shape, generator=gen).to(dtype)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    return PagedCache(k.to(device), v.to(device), tables.to(device), seq_lens.to(device), block_size)


@pytest.fixture
def paged_cache():
    """The `make_paged_cache` builder (fixtures are how test modules here share code)."""
    return make_paged_cache


@pytest.fixture
def assert_close():
    return close
