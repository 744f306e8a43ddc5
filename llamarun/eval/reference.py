"""The reference format's log-probabilities for every scored position, in float32, in a file on disk.

Why on disk: the KL of a format needs the reference's whole next-token distribution at every position.
For 20,000 tokens that is 20,000 x vocab floats: 3.9 GB for a 49k vocabulary, 10 GB for Llama 3's 128k,
more than a laptop spares in RAM. Keeping both models loaded and alternating window by window would
need no file, but doubles the weights in memory, which is exactly what a user with a 70B model on one
GPU cannot afford. So formats load one at a time, and the reference's rows go to a memory-mapped file
that each later format reads back window by window (sequential I/O, seconds next to the forwards).
Float32 rather than float16: the stored rows are bit-identical to what the reference computed, so a
format compared with itself gives KL exactly 0, and there is no storage noise floor under small KLs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from llamarun.errors import LlamarunError

FLOAT_BYTES = 4
SPARE_BYTES = 256 << 20  # left free on the disk after the file, so the eval does not fill it to the brim


class ReferenceLogprobs:
    """Rows [positions, vocab] of float32 log-probabilities, written once and read per window."""

    def __init__(self, folder: Path, positions: int, vocab: int) -> None:
        need = positions * vocab * FLOAT_BYTES
        free = shutil.disk_usage(folder).free
        if need + SPARE_BYTES > free:
            raise LlamarunError(
                f"the reference log-probabilities need {need / 1e9:.1f} GB on disk, {free / 1e9:.1f} GB are free "
                f"in {folder}", "evaluate fewer tokens (--max-tokens) or free some disk space")
        self.path = folder / "reference-logprobs.f32"
        self.nbytes = need
        self._rows = np.memmap(self.path, dtype=np.float32, mode="w+", shape=(positions, vocab))

    def write(self, first: int, rows: torch.Tensor) -> None:
        """Store rows [n, vocab] at positions [first, first + n)."""
        self._rows[first:first + rows.shape[0]] = rows.detach().to("cpu", torch.float32).numpy()

    def read(self, first: int, count: int, device: torch.device | str) -> torch.Tensor:
        """Rows [count, vocab] from position `first`, on `device`."""
        rows = np.array(self._rows[first:first + count])  # a copy: the map may be closed before the tensor dies
        return torch.from_numpy(rows).to(device)

    def close(self) -> None:
        """Drop the mapping and the file."""
        self._rows = None  # unmaps once the last view is gone (read() hands out copies, so none is)
        self.path.unlink(missing_ok=True)
