"""How many ranks a model is split over, as the CLI or a launcher says it; no torch import (the CLI stays fast)."""

from __future__ import annotations

import os
from typing import Any

from llamarun.errors import LlamarunError

TP_ENV = "LLAMARUN_TP"


def tensor_parallel_size() -> int:
    """Ranks to split a model over: `--tp` (LLAMARUN_TP), else torchrun's WORLD_SIZE, else 1."""
    launched = os.environ.get("WORLD_SIZE") if "RANK" in os.environ else None
    value = os.environ.get(TP_ENV) or launched or "1"
    try:
        size = int(value)
    except ValueError:
        raise LlamarunError(f"{TP_ENV}={value!r} is not a number of ranks", "give e.g. --tp 2") from None
    if size < 1:
        raise LlamarunError(f"--tp {size} is below 1", "give the number of ranks, e.g. --tp 2")
    return size


def set_tensor_parallel_size(size: int) -> None:
    """What `--tp N` does: later model loads in this process split the model over N ranks."""
    if size < 1:
        raise LlamarunError(f"--tp {size} is below 1", "give the number of ranks, e.g. --tp 2")
    os.environ[TP_ENV] = str(size)


def add_tp_argument(parser: Any) -> None:
    """`--tp N` for a CLI subcommand that loads a model (run, bench)."""
    parser.add_argument("--tp", type=int, metavar="N",
                        help="split the model over N processes on this host (tensor parallelism; N must divide "
                             "the head counts); under torchrun it defaults to the number of ranks")


def apply_tp_argument(args: Any) -> None:
    """Make the parsed `--tp` the setting later model loads read (no flag: leave it as it is)."""
    if getattr(args, "tp", None) is not None:
        set_tensor_parallel_size(args.tp)
