"""The memory plan of each rank: its own shard's weights and its own layers' KV cache, against its own device.

One process's plan (utils/memory.py) weighs the whole model against one device; over tp x pp ranks each
rank holds 1/tp of every linear of its stage's layers, the embedding only on the stage that reads it, the
head only on the last stage, and a KV cache of its layers and KV heads with the engine's `kv_tokens`
slots (the block ids are rank 0's, so every rank has the same number of slots). A rank whose share does
not fit fails before any process starts (spawned ranks are checked by rank 0, torchrun ranks by
themselves), naming the rank.
"""

from __future__ import annotations

from llamarun.config import ModelConfig
from llamarun.errors import DoesNotFitError
from llamarun.parallel.layout import Layout
from llamarun.parallel.plan import ShardPlan
from llamarun.parallel.stage_plan import StagePlan
from llamarun.utils.memory import MemoryPlan, available_memory, plan_memory


def rank_config(config: ModelConfig, layout: Layout, rank: int) -> ModelConfig:
    """The config of rank `rank`'s model: its stage's layer count, its share of heads, MLP rows and vocabulary."""
    shard = ShardPlan(config, layout.tp_rank_of(rank), layout.tp)
    return StagePlan(config, layout.stage_of(rank), layout.pp).local_config(shard.local_config())


def rank_weight_bytes(config: ModelConfig, layout: Layout, rank: int, mode: str, element: int) -> int:
    """Bytes rank `rank`'s weights take: its stage's groups only (no embedding or head where it has none)."""
    from llamarun.quant.footprint import plan_footprint
    from llamarun.quant.modes import head_method_for, method_for

    stage = StagePlan(config, layout.stage_of(rank), layout.pp)
    mode = "int8" if mode == "packed" else mode
    groups = plan_footprint(rank_config(config, layout, rank), method_for(mode), element, "",
                            head_method=head_method_for(mode))
    skipped = set()
    if not stage.holds_embedding:
        skipped.add("embedding")
    if not stage.is_last:
        skipped.add("head")
    return sum(g.bytes for g in groups if g.group not in skipped)


def rank_plan(config: ModelConfig, layout: Layout, rank: int, *, mode: str, element: int, kv_tokens: int,
              device: str, ranks_sharing_device: int = 1, available_bytes: int | None = None) -> MemoryPlan:
    """Rank `rank`'s plan on `device`; a CPU shared by `ranks_sharing_device` ranks lends each its share."""
    if available_bytes is None:
        available_bytes = available_memory(device)
        if available_bytes is not None and not device.startswith("cuda"):
            available_bytes //= max(1, ranks_sharing_device)
    local = rank_config(config, layout, rank)
    return plan_memory(local, rank_weight_bytes(config, layout, rank, mode, element), kv_tokens, device=device,
                       kv_bytes_per_element=element, available_bytes=available_bytes, model_name="its shard")


def check_rank_fits(config: ModelConfig, layout: Layout, rank: int, **plan_args: object) -> MemoryPlan:
    """`rank_plan(...)` if it fits, else a DoesNotFitError that names the rank and what it needs."""
    plan = rank_plan(config, layout, rank, **plan_args)  # type: ignore[arg-type]
    try:
        return plan.check()
    except DoesNotFitError as err:
        raise DoesNotFitError(f"{layout.describe(rank)} of {layout.world_size}: {err.message}",
                              "spread the model over more ranks (--tp, --pp), shorten the context, or use a "
                              "smaller quantization") from None


def rank_device(device: str, layout: Layout, rank: int, local_rank: int) -> str:
    """The device string rank `rank` plans against: its own GPU (`cuda:LOCAL_RANK`), or the CPU."""
    if device.startswith("cuda"):
        base = int(device.split(":", 1)[1]) if ":" in device else 0
        return f"cuda:{base + local_rank}"
    return device
