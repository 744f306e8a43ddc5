"""GGML tensor type ids and their block geometry (how many weights per block, how many bytes)."""

from __future__ import annotations

from enum import IntEnum

from llamarun.errors import CheckpointError, UnsupportedError


class GGMLType(IntEnum):
    """Tensor element types of GGML/GGUF, numbered as in ggml.h (ids 4, 5, 31-33, 36-38 were retired)."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41


QK_K = 256  # weights per K-quant super-block

# (weights per block, bytes per block), from the block structs in ggml-common.h.
BLOCK_GEOMETRY: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 2 + 16),
    GGMLType.Q4_1: (32, 2 + 2 + 16),
    GGMLType.Q5_0: (32, 2 + 4 + 16),
    GGMLType.Q5_1: (32, 2 + 2 + 4 + 16),
    GGMLType.Q8_0: (32, 2 + 32),
    GGMLType.Q8_1: (32, 2 + 2 + 32),  # half d, half s, 32 int8 (the gguf package still says 40)
    GGMLType.Q2_K: (QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    GGMLType.Q3_K: (QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    GGMLType.Q4_K: (QK_K, 2 + 2 + QK_K // 2 + 12),
    GGMLType.Q5_K: (QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    GGMLType.Q6_K: (QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    GGMLType.Q8_K: (QK_K, 4 + QK_K + QK_K // 8),
    GGMLType.IQ2_XXS: (QK_K, 2 + QK_K // 4),
    GGMLType.IQ2_XS: (QK_K, 2 + QK_K // 4 + QK_K // 32),
    GGMLType.IQ3_XXS: (QK_K, 2 + QK_K // 4 + QK_K // 8),
    GGMLType.IQ1_S: (QK_K, 2 + QK_K // 8 + QK_K // 16),
    GGMLType.IQ4_NL: (32, 2 + 16),
    GGMLType.IQ3_S: (QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    GGMLType.IQ2_S: (QK_K, 2 + QK_K // 4 + QK_K // 16),
    GGMLType.IQ4_XS: (QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (QK_K, 2 + 4 * 13),
    GGMLType.TQ2_0: (QK_K, 2 + 64),
    GGMLType.MXFP4: (32, 1 + 16),
    GGMLType.NVFP4: (64, 4 + 32),
    GGMLType.Q1_0: (128, 2 + 16),
}


def type_name(ggml_type: int) -> str:
    """Name of a GGML type id ('Q4_K'), or 'type <id>' for an id this table does not know."""
    try:
        return GGMLType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"


def block_geometry(ggml_type: int) -> tuple[int, int]:
    """(weights per block, bytes per block) of a type; UnsupportedError for an unknown id."""
    try:
        return BLOCK_GEOMETRY[GGMLType(ggml_type)]
    except (ValueError, KeyError):
        raise UnsupportedError(
            f"unknown GGML tensor type id {ggml_type}",
            "the file may come from a newer llama.cpp; convert it to a known type (e.g. Q4_K, Q8_0, F16)",
        ) from None


def tensor_nbytes(ggml_type: int, n_elements: int, row_size: int | None = None) -> int:
    """Bytes taken by `n_elements` weights of `ggml_type`.

    Blocks never straddle rows, so the row length (`row_size`, GGUF's ne[0]) must be a multiple of the
    block size; without `row_size` only the total element count is checked.
    """
    block, size = block_geometry(ggml_type)
    row = n_elements if row_size is None else row_size
    if block > 1 and (row % block or n_elements % block):
        raise CheckpointError(
            f"a {type_name(ggml_type)} tensor needs rows that are a multiple of {block} weights, got {row}",
            "the file is corrupt or was written by a broken converter",
        )
    return n_elements // block * size
