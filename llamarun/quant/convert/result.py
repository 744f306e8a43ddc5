"""What a converter returns: the packed weight, and how faithfully it stands for the file's weight."""

from __future__ import annotations

from dataclasses import dataclass

from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight

PackedWeight = Int4Weight | Fp8Weight | Int8Weight


@dataclass
class Conversion:
    """A packed weight converted from a checkpoint format.

    `exact` means `dequantize(weight)` equals the format's own dequantization (to float32 rounding);
    otherwise `error` is the re-quantization's relative RMS error, ||w' - w|| / ||w||, against it.
    """

    weight: PackedWeight
    source: str  # the file's format of this tensor, e.g. "Q4_K", "AWQ int4 g128"
    exact: bool = True
    error: float = 0.0

    @property
    def target(self) -> str:
        """The layout it became, e.g. "int4 g32", "int8 per channel", "fp8 per tensor"."""
        w = self.weight
        if isinstance(w, Int4Weight):
            return f"int4 g{w.group_size}"
        if isinstance(w, Int8Weight):
            return "int8 per channel"
        return "fp8 per tensor" if w.scale.numel() == 1 else "fp8 per channel"
