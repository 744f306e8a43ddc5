"""A rank's shard of a named model shape with random weights, for benchmarks at sizes no checkpoint here has.

Each rank draws only its own slices, straight on its GPU, from the per-rank config of the shard plan, then
gets the same wrappers a checkpoint-built shard gets (parallel/layers.py). So a 70B model over two H200s
is built in seconds with no file, and the steps, collectives and CUDA graphs are exactly those of a real
model. The ranks draw from different seeds: the numbers differ from a one-process build, the shapes and
the work do not.
"""

from __future__ import annotations

import torch
from torch import nn

from llamarun.config import ModelConfig
from llamarun.parallel.group import ParallelGroup
from llamarun.parallel.layers import make_whole
from llamarun.parallel.plan import ShardPlan

RANDOM_FORMAT = "random"  # ShardSpec.format for these builds; ShardSpec.path is then the shape's name


def random_config(name: str) -> ModelConfig:
    from llamarun.bench.random_weights import preset_config

    return preset_config(name)


def build_random_shard(name: str, plan: ShardPlan, group: ParallelGroup, dtype: torch.dtype, weights: str,
                       seed: int = 0) -> nn.Module:
    """Rank `plan.rank`'s model of shape `name`, random weights packed by the `weights` mode, made whole."""
    from llamarun.bench.random_weights import build_random_model
    from llamarun.quant.modes import head_method_for, method_for, resolve_weights

    resolved = resolve_weights("exact" if weights == "auto" else weights, device=str(group.device),
                               config=plan.config)
    model = build_random_model(plan.local_config(), device=group.device, dtype=dtype, seed=seed + plan.rank,
                               method=method_for(resolved), head_method=head_method_for(resolved))
    return make_whole(model, plan, group)
