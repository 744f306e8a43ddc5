"""Repetition, presence and frequency penalties, with per-request token counts kept incrementally.

The rule (llama.cpp's, which Ollama uses): count each token id over the last `repeat_last_n` tokens of
prompt + output, then for every token seen at least once

    logit = logit / repetition_penalty   if logit > 0
    logit = logit * repetition_penalty   otherwise
    logit = logit - count * frequency_penalty - presence_penalty

Counts live in one int32 vector per request on the logits' device. Each new token costs one or two
in-place scalar updates (add the new token, drop the one leaving the window), never a scan of history.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class TokenCounts:
    """How often each token id occurs in one request's penalty window.

    `window` is the number of most recent tokens counted; 0 or less counts the whole context.
    The count vector is made lazily, on the first `vector()` call, because only then are the
    vocabulary size (the logits' width) and the device known.
    """

    def __init__(self, window: int, prompt_token_ids: Sequence[int] = ()) -> None:
        self.window = max(int(window), 0)
        # The history is kept only to know which token leaves a sliding window; it is never rescanned.
        self._history: list[int] = [int(t) for t in prompt_token_ids]
        self._counts: Tensor | None = None  # [vocab] int32

    def __len__(self) -> int:
        return len(self._history)

    def append(self, token_id: int) -> None:
        """Count one new token (and forget the one that slides out of the window)."""
        self._history.append(token_id)
        counts = self._counts
        if counts is None:
            return
        if token_id < counts.numel():
            counts[token_id].add_(1)  # add_ on the element view: one kernel, no host sync
        if self.window and len(self._history) > self.window:
            leaving = self._history[-self.window - 1]
            if leaving < counts.numel():
                counts[leaving].sub_(1)

    def vector(self, vocab_size: int, device: torch.device) -> Tensor:
        """The counts as a [vocab_size] int32 tensor on `device` (built once, then kept up to date)."""
        counts = self._counts
        if counts is None or counts.numel() != vocab_size or counts.device != device:
            recent = self._history[-self.window:] if self.window else self._history
            ids = torch.tensor([t for t in recent if 0 <= t < vocab_size], dtype=torch.long)  # [n]
            counts = torch.bincount(ids, minlength=vocab_size).to(torch.int32)  # [vocab]
            # Pinned memory lets the copy to a GPU run without a host sync.
            counts = (counts.pin_memory().to(device, non_blocking=True) if device.type == "cuda"
                      else counts.to(device))
            self._counts = counts
        return counts


def apply_penalties(logits: Tensor, counts: Tensor, repetition: Tensor | float, presence: Tensor | float,
                    frequency: Tensor | float) -> Tensor:
    """Penalised copy of `logits` [R, V] given `counts` [R, V] and penalties ([R, 1] each, or floats)."""
    seen = counts > 0  # [R, V]
    scaled = torch.where(logits > 0, logits / repetition, logits * repetition)  # [R, V]
    out = torch.where(seen, scaled, logits)  # [R, V]
    return out - counts.to(logits.dtype) * frequency - seen.to(logits.dtype) * presence  # [R, V]
