"""How the ranks are laid out: `--tp N` inside a stage times `--pp M` stages; no torch import (the CLI stays fast).

Global rank = stage * tp + tp_rank, so stage 0 holds rank 0 (the scheduler) and the ranks of one stage
are neighbours: with torchrun's `--nproc-per-node tp` each host is one stage, its all-reduces stay on the
host and only the activations between stages cross the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from llamarun.errors import LlamarunError
from llamarun.parallel.settings import TP_ENV

PP_ENV = "LLAMARUN_PP"


@dataclass(frozen=True)
class Layout:
    """`tp` ranks per stage, `pp` stages."""

    tp: int
    pp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def stage_of(self, rank: int) -> int:
        return rank // self.tp

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tp

    def rank_of(self, stage: int, tp_rank: int) -> int:
        return stage * self.tp + tp_rank

    def describe(self, rank: int) -> str:
        """`rank 3 (stage 1, tp rank 1)`: how errors name a rank."""
        if self.pp == 1:
            return f"rank {rank}"
        return f"rank {rank} (stage {self.stage_of(rank)}, tp rank {self.tp_rank_of(rank)})"


def _count(name: str, value: str, flag: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise LlamarunError(f"{name}={value!r} is not a number", f"give e.g. {flag} 2") from None
    if size < 1:
        raise LlamarunError(f"{flag} {size} is below 1", f"give a count, e.g. {flag} 2")
    return size


def parallel_layout() -> Layout:
    """`--tp` (LLAMARUN_TP) and `--pp` (LLAMARUN_PP); under torchrun, tp defaults to WORLD_SIZE / pp."""
    pp = _count(PP_ENV, os.environ.get(PP_ENV) or "1", "--pp")
    world = os.environ.get("WORLD_SIZE") if "RANK" in os.environ else None
    if os.environ.get(TP_ENV):
        tp = _count(TP_ENV, os.environ[TP_ENV], "--tp")
    elif world is not None:
        ranks = _count("WORLD_SIZE", world, "--nproc-per-node")
        if ranks % pp:
            raise LlamarunError(f"torchrun started {ranks} ranks, which --pp {pp} stages cannot share equally",
                                "start tp x pp ranks in all (nnodes x nproc-per-node)")
        tp = ranks // pp
    else:
        tp = 1
    return Layout(tp, pp)


def parallel_requested() -> bool:
    """Whether model loads in this process go over several ranks (`--tp`/`--pp` above 1, or torchrun)."""
    return parallel_layout().world_size > 1


def add_pp_argument(parser: Any) -> None:
    """`--pp M` for a CLI subcommand that loads a model (run, serve, bench)."""
    parser.add_argument("--pp", type=int, metavar="M",
                        help="split the model's layers into M pipeline stages, each of --tp ranks (tp x pp "
                             "processes in all; spawned here, or started by torchrun across hosts)")


def apply_pp_argument(args: Any) -> None:
    """Make the parsed `--pp` the setting later model loads read (no flag: leave it as it is)."""
    value = getattr(args, "pp", None)
    if value is not None:
        if value < 1:
            raise LlamarunError(f"--pp {value} is below 1", "give the number of stages, e.g. --pp 2")
        os.environ[PP_ENV] = str(value)
