"""What loading kept packed, re-quantized or expanded: one line a user can read in `show` or `--verbose`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no torch at open time: the report is made when a checkpoint opens
    from llamarun.quant.convert.result import Conversion


@dataclass
class _Tally:
    count: int = 0
    worst_error: float = 0.0


@dataclass
class PackingReport:
    """Counts of linear weights by (file format -> layout), filled as a checkpoint streams its tensors."""

    packed: dict[tuple[str, str], _Tally] = field(default_factory=dict)  # exact
    requantized: dict[tuple[str, str], _Tally] = field(default_factory=dict)
    expanded: dict[str, int] = field(default_factory=dict)  # reason -> count

    def record(self, conversion: Conversion) -> None:
        """Count one converted weight."""
        table = self.packed if conversion.exact else self.requantized
        tally = table.setdefault((conversion.source, conversion.target), _Tally())
        tally.count += 1
        tally.worst_error = max(tally.worst_error, conversion.error)

    def record_expanded(self, reason: str) -> None:
        """Count one linear weight that had to be expanded to float (e.g. "GPTQ act-order")."""
        self.expanded[reason] = self.expanded.get(reason, 0) + 1

    def note(self) -> str:
        """e.g. "kept packed: 210 Q4_1 -> int4 g32 (exact); re-quantized: 1 Q6_K -> int8 per channel
        (relative RMS error up to 0.41%)"; empty when nothing was converted."""
        parts = []
        if self.packed:
            items = ", ".join(f"{t.count} {src} -> {dst}" for (src, dst), t in self.packed.items())
            parts.append(f"kept packed: {items} (exact)")
        if self.requantized:
            items = ", ".join(f"{t.count} {src} -> {dst} (relative RMS error up to {100 * t.worst_error:.2f}%)"
                              for (src, dst), t in self.requantized.items())
            parts.append(f"re-quantized: {items}")
        if self.expanded:
            parts.append("expanded to float: " + ", ".join(f"{n} {why}" for why, n in self.expanded.items()))
        return "; ".join(parts)
