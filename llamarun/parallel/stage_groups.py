"""The tensor-parallel group of each pipeline stage, inside the world group that init_group made.

Every rank creates every stage's group, in stage order (torch.distributed requires all ranks to take
part in each new_group), and keeps its own. Collectives on it carry the rank's global number and stage
in their errors, so "rank 1 of 2" never leaves the reader guessing which stage's rank 1 it was.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import torch
import torch.distributed as dist

from llamarun.parallel.group import ParallelError, ParallelGroup, backend_for
from llamarun.parallel.layout import Layout


@dataclasses.dataclass
class StageTPGroup(ParallelGroup):
    """A stage's tp ranks: `rank` and `world_size` are within the stage (what the sharded layers need)."""

    label: str = ""  # e.g. "rank 3 (stage 1, tp rank 1) of 4"

    def all_reduce(self, x: torch.Tensor, op_name: str = "all_reduce") -> torch.Tensor:
        try:
            return super().all_reduce(x, op_name)
        except ParallelError as err:
            raise self._relabel(err) from None

    def all_gather_last(self, x: torch.Tensor, op_name: str = "all_gather") -> torch.Tensor:
        try:
            return super().all_gather_last(x, op_name)
        except ParallelError as err:
            raise self._relabel(err) from None

    def _relabel(self, err: ParallelError) -> ParallelError:
        detail = err.message.split(": ", 1)[-1]
        return ParallelError(f"{self.label}: {detail}", err.hint)


def stage_tp_group(world: ParallelGroup, layout: Layout) -> StageTPGroup:
    """This rank's stage group (a group of one when tp is 1: its collectives are never called then)."""
    rank = world.rank
    mine = None
    if layout.tp > 1:
        timeout = timedelta(seconds=world.timeout_s)
        for stage in range(layout.pp):
            ranks = [layout.rank_of(stage, t) for t in range(layout.tp)]
            group = dist.new_group(ranks=ranks, backend=backend_for(world.device), timeout=timeout)
            if stage == layout.stage_of(rank):
                mine = group
    label = f"{layout.describe(rank)} of {layout.world_size}"
    return StageTPGroup(layout.tp_rank_of(rank), layout.tp, world.device, world.timeout_s, mine, world.control,
                        label=label)
