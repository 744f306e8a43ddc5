"""Open any supported checkpoint: the format is detected from metadata, then its loader runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llamarun.loaders.checkpoint import Checkpoint


def _open_hf(path: Path) -> Checkpoint:
    from llamarun.loaders.hf import open_hf

    return open_hf(path)


def _open_gguf(path: Path) -> Checkpoint:
    from llamarun.loaders.gguf.checkpoint import open_gguf

    return open_gguf(path)


def _open_mlx(path: Path) -> Checkpoint:
    from llamarun.loaders.mlx import open_mlx

    return open_mlx(path)


def _open_meta(path: Path) -> Checkpoint:
    from llamarun.loaders.meta import open_meta

    return open_meta(path)


# Each factory imports its loader on use, so optional dependencies load only when needed.
LOADERS: dict[str, Callable[[Path], Checkpoint]] = {
    "hf": _open_hf,
    "gguf": _open_gguf,
    "mlx": _open_mlx,
    "meta": _open_meta,
}


def open_checkpoint(path: Path | str, fmt: str | None = None) -> Checkpoint:
    """Open the checkpoint at `path`; `fmt` skips detection when the caller already knows it."""
    from llamarun.loaders.detect import detect_format

    path = Path(path)
    return LOADERS[fmt or detect_format(path)](path)
