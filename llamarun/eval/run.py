"""The eval loop: the reference format first (its log-probabilities kept on disk), then each other format,
one loaded at a time, compared with the reference window by window."""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llamarun.eval.forward import window_logits
from llamarun.eval.loader import FormatModel, LoadFormat
from llamarun.eval.metrics import Totals, compare, log_probs
from llamarun.eval.reference import ReferenceLogprobs
from llamarun.eval.windows import Window


@dataclass
class FormatResult:
    """One format's scores against the reference, and what it cost."""

    name: str
    weights: str
    dtype: str
    device: str
    linear_bytes: int
    load_seconds: float
    eval_seconds: float
    totals: Totals


def evaluate(token_ids: list[int], formats: list[str], windows: list[Window], load: LoadFormat, *,
             scratch: Path | None = None, on_window: Callable[[str], None] | None = None) -> list[FormatResult]:
    """Score every format over `windows` of `token_ids`; `formats[0]` is the reference.

    `scratch` is the folder for the reference's log-probabilities file (a temporary folder is made in it
    and removed after); `on_window(format)` is called after each window, for progress.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long)  # [tokens]
    positions = ids.shape[0] - 1
    results: list[FormatResult] = []
    with tempfile.TemporaryDirectory(prefix="eval-", dir=scratch) as folder:
        store: ReferenceLogprobs | None = None
        try:
            for index, name in enumerate(formats):
                loaded = load(name)
                if store is None:
                    store = ReferenceLogprobs(Path(folder), positions, loaded.model.config.vocab_size)
                results.append(_score(loaded, ids, windows, store, is_reference=index == 0, on_window=on_window))
                del loaded  # before the next format loads: only one set of weights in memory at a time
                _release_memory()
        finally:
            if store is not None:
                store.close()
    return results


def _score(loaded: FormatModel, ids: torch.Tensor, windows: list[Window], store: ReferenceLogprobs, *,
           is_reference: bool, on_window: Callable[[str], None] | None) -> FormatResult:
    t0 = time.perf_counter()
    totals = Totals()
    for window in windows:
        inputs = ids[window.start:window.end].to(loaded.device)  # [ctx]
        logits = window_logits(loaded.model, inputs, loaded.dtype, loaded.device)  # [ctx, vocab]
        rows = log_probs(logits[window.scored_from - window.start:])  # [scored, vocab]
        if is_reference:
            store.write(window.scored_from, rows)
            reference = rows  # compared with itself through the same code: KL 0, agreement 1
        else:
            reference = store.read(window.scored_from, window.scored, loaded.device)  # [scored, vocab]
        targets = ids[window.scored_from + 1:window.end + 1].to(loaded.device)  # [scored]
        totals.add(compare(reference, rows, targets))
        if on_window is not None:
            on_window(loaded.name)
    return FormatResult(name=loaded.name, weights=loaded.weights, dtype=str(loaded.dtype).removeprefix("torch."),
                        device=loaded.device,
                        linear_bytes=loaded.linear_bytes, load_seconds=loaded.load_seconds,
                        eval_seconds=time.perf_counter() - t0, totals=totals)


def _release_memory() -> None:
    gc.collect()  # the engine the loader built holds reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
