"""Calibration text for the methods that look at a layer's inputs (GPTQ, SmoothQuant): the model's own forward
over token windows, run as many times as a method needs (GPTQ once per layer, SmoothQuant once)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from llamarun.errors import LlamarunError

MIN_CALIBRATION_TOKENS = 256  # a few hundred rows at least, or the statistics say nothing
MIN_WINDOW = 16  # a shorter tail window adds nothing but a forward


def calibration_runner(model: nn.Module, token_ids: Sequence[int], *, ctx: int, dtype: torch.dtype,
                       device: str | torch.device, method: str, hint: str) -> Callable[[], None]:
    """A function that runs `model` over `token_ids` in windows of `ctx` (its outputs are not kept).

    Too little text is a LlamarunError naming `method` and carrying `hint` (where the caller's text comes from).
    """
    from llamarun.eval.forward import window_logits

    if len(token_ids) < MIN_CALIBRATION_TOKENS:
        raise LlamarunError(f"{method} needs at least {MIN_CALIBRATION_TOKENS} calibration tokens, and the text "
                            f"gives {len(token_ids)}", hint)
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=device)  # [tokens]
    windows = [ids[i:i + ctx] for i in range(0, len(ids), ctx) if len(ids) - i >= MIN_WINDOW]

    def run() -> None:
        with torch.inference_mode():
            for window in windows:
                window_logits(model, window, dtype, device)

    return run
