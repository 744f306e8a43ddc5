"""Row operations on packed weights, so loaders and the build hook never expand to reorder or merge.

Every layout keeps one row per output channel in each of its tensors (`qweight`, `scales`, `mins`;
`weight`/`qweight` and a per-channel `scale`), so a row permutation or a concatenation along the
output dimension is the same operation on each of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llamarun.errors import ConfigMismatchError
from llamarun.quant.convert.result import PackedWeight
from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight

RowOp = Callable[[torch.Tensor], torch.Tensor]


def map_rows(w: PackedWeight, op: RowOp) -> PackedWeight:
    """Apply a row reordering `op` ([N, ...] -> [N, ...]) to every per-row tensor of `w`."""
    if isinstance(w, Int4Weight):
        return Int4Weight(op(w.qweight), op(w.scales), op(w.mins), w.group_size)
    if isinstance(w, Int8Weight):
        return Int8Weight(op(w.qweight), op(w.scale))
    if isinstance(w, Fp8Weight):
        return Fp8Weight(op(w.weight), w.scale if w.scale.numel() == 1 else op(w.scale))
    raise TypeError(f"not a packed weight: {type(w).__name__}")


def cat_rows(parts: list[PackedWeight]) -> PackedWeight:
    """Stack packed weights along the output dimension (q/k/v or gate/up into one merged linear)."""
    first = parts[0]
    if any(type(p) is not type(first) for p in parts):
        kinds = ", ".join(type(p).__name__ for p in parts)
        raise ConfigMismatchError(f"cannot merge weights packed differently ({kinds})",
                                  "the checkpoint quantizes q/k/v or gate/up with different schemes")
    if isinstance(first, Int4Weight):
        if any(p.group_size != first.group_size or p.scales.dtype != first.scales.dtype for p in parts):
            raise ConfigMismatchError("cannot merge int4 weights with different group sizes or scale dtypes")
        return Int4Weight(torch.cat([p.qweight for p in parts]), torch.cat([p.scales for p in parts]),
                          torch.cat([p.mins for p in parts]), first.group_size)
    if isinstance(first, Int8Weight):
        return Int8Weight(torch.cat([p.qweight for p in parts]), torch.cat([p.scale for p in parts]))
    scales = [p.scale for p in parts]
    if all(s.numel() == 1 for s in scales) and all(torch.equal(s, scales[0]) for s in scales):
        scale = scales[0]
    else:  # per-tensor scales that differ become per-channel ones: the same numbers, exactly
        scale = torch.cat([s.expand(p.weight.shape[0]) for s, p in zip(scales, parts, strict=True)])
    return Fp8Weight(torch.cat([p.weight for p in parts]), scale.contiguous())
