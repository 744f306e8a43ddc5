"""The eval's result: one aligned table (valid Markdown too) and a JSON record."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llamarun.eval.run import FormatResult

COLUMNS = ("format", "weights", "perplexity", "mean KL (nats)", "top-1 agree", "tokens", "linear weights",
           "load s", "eval s")


@dataclass
class EvalReport:
    """What was evaluated, how, and each format's result (the first is the reference)."""

    model: str
    text: str
    text_tokens: int
    ctx: int
    stride: int
    windows: int
    device: str
    results: list[FormatResult]

    @property
    def reference(self) -> str:
        return self.results[0].name if self.results else ""

    def to_json(self) -> dict[str, Any]:
        """A plain-data record: the settings, then one entry per format with raw sums and derived scores."""
        return {
            "model": self.model, "text": self.text, "text_tokens": self.text_tokens, "ctx": self.ctx,
            "stride": self.stride, "windows": self.windows, "device": self.device, "reference": self.reference,
            "formats": [
                {"format": r.name, "weights": r.weights, "dtype": r.dtype, "tokens": r.totals.tokens,
                 "perplexity": _number(r.totals.perplexity), "mean_kl": _number(r.totals.mean_kl),
                 "top1_agreement": _number(r.totals.top1), "nll_sum": r.totals.nll, "kl_sum": r.totals.kl,
                 "linear_weight_bytes": r.linear_bytes, "load_seconds": round(r.load_seconds, 3),
                 "eval_seconds": round(r.eval_seconds, 3)}
                for r in self.results
            ],
        }


def table(report: EvalReport) -> str:
    """A header line and one row per format, columns padded to line up."""
    rows = [COLUMNS] + [
        (r.name, f"{r.weights} {r.dtype}", f"{r.totals.perplexity:.4f}", f"{r.totals.mean_kl:.6f}",
         f"{100 * r.totals.top1:.2f}%", str(r.totals.tokens), f"{r.linear_bytes / 1e6:.1f} MB",
         f"{r.load_seconds:.1f}", f"{r.eval_seconds:.1f}")
        for r in report.results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    head = (f"{report.model} on {report.text}: {report.text_tokens} tokens, windows of {report.ctx} every "
            f"{report.stride} ({report.windows} windows), {report.device}; KL and top-1 against {report.reference}")
    return head + "\n\n" + "\n".join(lines)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value
