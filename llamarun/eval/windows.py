"""Which tokens each forward pass sees and which of its predictions it scores.

Position p of a text of N tokens predicts token p + 1, so there are N - 1 positions to score. A window
feeds `ctx` consecutive positions to the model; windows start every `stride` positions, and each one
scores only the positions no earlier window scored, so every position is scored exactly once. With
stride == ctx the windows are disjoint; a smaller stride gives each scored token more context (the
overlap is context only). The last window is moved back to end at the text's end, so every window is
a full `ctx` long and no tail is scored with little context.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamarun.errors import LlamarunError


@dataclass(frozen=True)
class Window:
    """Input positions [start, end) of one forward; positions [scored_from, end) are scored."""

    start: int
    end: int
    scored_from: int

    @property
    def scored(self) -> int:
        """How many positions this window scores."""
        return self.end - self.scored_from


def plan_windows(num_tokens: int, ctx: int, stride: int | None = None) -> list[Window]:
    """The windows over a text of `num_tokens` tokens (default stride: ctx, disjoint windows)."""
    stride = ctx if stride is None else stride
    if ctx < 2:
        raise LlamarunError(f"a window of {ctx} tokens is too small", "use --ctx 2 or more (512 is usual)")
    if not 1 <= stride <= ctx:
        raise LlamarunError(f"stride {stride} must be between 1 and the window size {ctx}",
                            "a stride equal to --ctx gives disjoint windows")
    positions = num_tokens - 1
    if positions < ctx:
        raise LlamarunError(f"the text has {num_tokens} tokens, shorter than one window of {ctx} tokens "
                            f"plus the token it predicts", "use a longer text or a smaller --ctx")
    windows, start, scored = [], 0, 0
    while scored < positions:
        start = min(start, positions - ctx)  # the last window ends at the text's end, full length
        end = start + ctx
        windows.append(Window(start, end, scored))
        scored, start = end, start + stride
    return windows
