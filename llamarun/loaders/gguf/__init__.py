"""GGUF checkpoints: the header reader (no torch) and the block dequantizers (torch, loaded on use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamarun.loaders.gguf.ggml_types import GGMLType, tensor_nbytes
from llamarun.loaders.gguf.reader import GGUFFile, GGUFTensorInfo, read_gguf

if TYPE_CHECKING:
    from llamarun.loaders.gguf.dequant import SUPPORTED_TYPES, dequantize, load_tensor

__all__ = [
    "SUPPORTED_TYPES",
    "GGMLType",
    "GGUFFile",
    "GGUFTensorInfo",
    "dequantize",
    "load_tensor",
    "read_gguf",
    "tensor_nbytes",
]

_TORCH_NAMES = {"SUPPORTED_TYPES", "dequantize", "load_tensor"}


def __getattr__(name: str) -> Any:
    # The dequantizers need torch; import them only when asked so `show`/`list` stay torch-free.
    if name in _TORCH_NAMES:
        from llamarun.loaders.gguf import dequant

        return getattr(dequant, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
