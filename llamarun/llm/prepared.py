"""A CPU model's prepared weights, kept in the llamarun home, so that the next load maps them instead of building.

Building a CPU model from a GGUF file converts each block format to our layouts and repacks those for the CPU
kernels. For the default model that is about 1.5 s of a load that should take under one. The built module
(parameters and buffers, packed records included) is saved once with `torch.save`. Later loads map the file
(`torch.load(mmap=True)`): pages are read as the first decode step touches them, and nothing is converted.

**The key.** A saved model is only ever reused under the same key: the checkpoint's files (path, size,
modification time), the weights mode and dtype, torch's version, a digest of llamarun's own sources (any
change to a loader, a layout or a kernel rebuilds), and what decides which native kernels exist (the
`LLAMARUN_CPU_KERNELS` and `LLAMARUN_CPU_PROMPT_GEMM` switches, AVX2, the C compiler).

**What is skipped.** Checkpoints under `MIN_CHECKPOINT_BYTES` build faster than they load from disk, and prepared
models over `MAX_PREPARED_BYTES` are not written. Only the `KEEP` most recently used entries stay.
`LLAMARUN_PREPARED=off` turns the cache off.

**Trust.** The files are pickles that llamarun wrote into its own home, with owner-only permissions. Anyone able
to write there could also replace the models themselves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ENV = "LLAMARUN_PREPARED"  # auto (default) | off
MIN_CHECKPOINT_BYTES = 16 * 2**20
MAX_PREPARED_BYTES = 4 * 2**30
KEEP = 3
PACKAGE = Path(__file__).resolve().parents[1]


def folder() -> Path:
    from llamarun.store.home import llamarun_home

    return llamarun_home() / "prepared"


@functools.cache
def source_digest() -> str:
    """A digest of llamarun's Python and C sources (headers too): a changed loader, layout or kernel means a different
    model."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".c", ".h") and path.is_file():
            h.update(str(path.relative_to(PACKAGE)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def key_for(path: Path, mode: str, dtype: torch.dtype) -> str | None:
    """The cache key of this checkpoint built this way, or None when it is not worth caching (or cache is off)."""
    if os.environ.get(ENV, "auto").strip().lower() == "off":
        return None
    path = Path(path).resolve()
    files = [(f, f.stat()) for f in _files(path)]
    if sum(st.st_size for _, st in files) < MIN_CHECKPOINT_BYTES:
        return None
    from llamarun.kernels.cpu import build
    from llamarun.quant.int4 import PROMPT_GEMM_ENV

    facts = {
        "files": [[str(f), st.st_size, st.st_mtime_ns] for f, st in files],
        "mode": mode, "dtype": str(dtype), "torch": torch.__version__, "sources": source_digest(),
        "kernels": [os.environ.get(build.ENV, "auto"), os.environ.get(PROMPT_GEMM_ENV, "auto"), build.cpu_has_avx2(),
                    os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def load(key: str) -> torch.nn.Module | None:
    """The model saved under `key`, mapped from disk; None if there is none or it cannot be read."""
    path = folder() / f"{key}.pt"
    if not path.exists():
        return None
    try:
        model = torch.load(path, mmap=True, weights_only=False)
    except Exception as err:  # a truncated or foreign file: build instead, and replace it
        log.warning("prepared model %s unreadable (%s): building it again", path.name, str(err).splitlines()[0][:200])
        path.unlink(missing_ok=True)
        return None
    if not isinstance(model, torch.nn.Module):
        path.unlink(missing_ok=True)
        return None
    os.utime(path)  # recently used: kept longest
    return model


def save(key: str, model: torch.nn.Module) -> None:
    """Write `model` under `key` (atomically), then drop all but the `KEEP` most recently used entries."""
    size = sum(t.nbytes for t in model.parameters()) + sum(b.nbytes for b in model.buffers())
    if size > MAX_PREPARED_BYTES:
        return
    where = folder()
    tmp = where / f".{key}.{os.getpid()}.tmp"
    try:
        where.mkdir(parents=True, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            torch.save(model, f)
        os.replace(tmp, where / f"{key}.pt")
    except Exception as err:  # a full disk or a module that does not pickle costs the next load its speed only
        log.info("prepared model not saved: %s", str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        tmp.unlink(missing_ok=True)
        return
    entries = sorted(where.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)
