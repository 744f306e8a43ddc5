"""AutoAWQ int4 (the "GEMM" version, the one checkpoints on the Hub use) -> `Int4Weight`, exactly.

AWQ stores the weight input-major: `qweight` int32 [K, N / 8], `qzeros` int32 [K / G, N / 8] and
`scales` [K / G, N] (float16), with `w[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]`.
Each int32 holds eight output columns, but not in order: nibble j (bits 4j..4j+3) holds column
`8c + AWQ_ORDER[j]`, AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7), for weights and zeros alike.
In our terms scales = s and mins = -z * s, both float32 (a 4-bit integer times a float16 is exact
there), so q * scale + min is (q - z) * s with no rounding.
"""

from __future__ import annotations

import torch

from llamarun.errors import ConfigMismatchError
from llamarun.quant.convert.result import Conversion
from llamarun.quant.convert.words import unpack_int32_nibbles
from llamarun.quant.layouts import Int4Weight, pack_nibbles

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble j of a word holds column AWQ_ORDER[j] of its eight
_COLUMN_TO_NIBBLE = torch.tensor([AWQ_ORDER.index(c) for c in range(8)])  # (0, 4, 1, 5, 2, 6, 3, 7)


def awq_unpack(words: torch.Tensor) -> torch.Tensor:
    """[R, N / 8] int32 in AWQ's column order -> [R, N] uint8 values in natural column order."""
    nibbles = unpack_int32_nibbles(words).view(words.shape[0], -1, 8)  # [R, N / 8, 8] in nibble order
    return nibbles[..., _COLUMN_TO_NIBBLE].reshape(words.shape[0], -1)  # [R, N]


def awq_to_int4(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> Conversion:
    """AWQ tensors of one linear -> Int4Weight [N, K] in groups of `group_size`."""
    k, n = qweight.shape[0], qweight.shape[1] * 8
    check_int4_group_shapes("AWQ", k, n, group_size, {"scales": (scales, (k // group_size, n)),
                                                      "qzeros": (qzeros, (k // group_size, n // 8))})
    q = awq_unpack(qweight)  # [K, N]
    zeros = awq_unpack(qzeros).float()  # [K / G, N]
    s = scales.float()  # [K / G, N]
    weight = Int4Weight(pack_nibbles(q.t()), s.t().contiguous(), (-zeros * s).t().contiguous(),
                        group_size=group_size)
    return Conversion(weight, f"AWQ int4 g{group_size}")


def check_int4_group_shapes(fmt: str, k: int, n: int, group_size: int,
                            tensors: dict[str, tuple[torch.Tensor, tuple[int, int]]]) -> None:
    """A clear error when a group size does not divide K or a side tensor's shape does not fit it."""
    if group_size <= 0 or k % group_size:
        raise ConfigMismatchError(f"{fmt} group_size {group_size} does not divide the input size {k}",
                                  "check group_size in config.json's quantization_config")
    for name, (t, expected) in tensors.items():
        if tuple(t.shape) != expected:
            raise ConfigMismatchError(
                f"{fmt} {name} have shape {tuple(t.shape)}, expected {expected} for a {n}x{k} weight in "
                f"groups of {group_size}", "check group_size in config.json's quantization_config")
