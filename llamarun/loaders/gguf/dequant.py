"""Turn a GGUF tensor's bytes into a torch tensor: plain floats are reinterpreted, blocks are expanded.

All blocks of a tensor are expanded at once with vectorised torch ops; results are bit-identical to
`gguf.quants.dequantize` (same float32 operations in the same order).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from llamarun.errors import CheckpointError, UnsupportedError
from llamarun.loaders.gguf import dequant_kquants as kq
from llamarun.loaders.gguf import dequant_legacy as lq
from llamarun.loaders.gguf.ggml_types import BLOCK_GEOMETRY, GGMLType, type_name
from llamarun.loaders.gguf.reader import GGUFFile

# Types stored as plain little-endian numbers: reinterpret the bytes.
_PLAIN: dict[GGMLType, torch.dtype] = {
    GGMLType.F32: torch.float32,
    GGMLType.F16: torch.float16,
    GGMLType.BF16: torch.bfloat16,
}

# Block types: [n_blocks, type_size] uint8 -> [n_blocks, block_size] float32.
_BLOCKS: dict[GGMLType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLType.Q4_0: lq.dequant_q4_0,
    GGMLType.Q4_1: lq.dequant_q4_1,
    GGMLType.Q5_0: lq.dequant_q5_0,
    GGMLType.Q5_1: lq.dequant_q5_1,
    GGMLType.Q8_0: lq.dequant_q8_0,
    GGMLType.Q2_K: kq.dequant_q2_k,
    GGMLType.Q3_K: kq.dequant_q3_k,
    GGMLType.Q4_K: kq.dequant_q4_k,
    GGMLType.Q5_K: kq.dequant_q5_k,
    GGMLType.Q6_K: kq.dequant_q6_k,
}

SUPPORTED_TYPES: frozenset[GGMLType] = frozenset(_PLAIN) | frozenset(_BLOCKS)


def dequantize(
    raw: torch.Tensor, ggml_type: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Expand `raw` (1-D uint8, the tensor's bytes) of `ggml_type` into a `shape` tensor of `dtype`.

    For F32/F16/BF16 the result may share memory with `raw` when `dtype` matches the stored type.
    """
    if ggml_type not in SUPPORTED_TYPES:
        names = ", ".join(t.name for t in sorted(SUPPORTED_TYPES))
        raise UnsupportedError(
            f"GGML tensor type {type_name(ggml_type)} cannot be dequantized (supported: {names})",
            "convert the model to one of the supported types, e.g. with llama.cpp's llama-quantize",
        )
    gtype = GGMLType(ggml_type)
    block, type_size = BLOCK_GEOMETRY[gtype]
    n_elements = math.prod(shape)
    expected = n_elements // block * type_size
    row = shape[-1] if shape else 1
    if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() != expected or row % block:
        raise CheckpointError(
            f"a {gtype.name} tensor of shape {tuple(shape)} needs {expected} bytes, got {raw.numel()} "
            f"({raw.dtype}, {raw.dim()}-D)",
            "the file is corrupt or its tensor directory does not match its data",
        )
    plain = _PLAIN.get(gtype)
    if plain is not None:
        return raw.view(plain).view(shape).to(dtype)
    blocks = raw.view(-1, type_size)  # [n_blocks, type_size]
    out = _BLOCKS[gtype](blocks)  # [n_blocks, block] float32
    return out.view(shape).to(dtype)


def load_tensor(f: GGUFFile, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Tensor `name` of `f` as a torch tensor of `dtype`, shaped (out_features, in_features) for weights.

    Plain float tensors of the requested dtype are returned without a copy, backed by the file's
    copy-on-write memory map (writes to them never reach the file).
    """
    info = f.tensors.get(name)
    raw = torch.from_numpy(f.raw(name))  # 1-D uint8, shares the memory map
    assert info is not None  # f.raw raised otherwise
    return dequantize(raw, info.ggml_type, info.shape, dtype)
