"""Build rank r's shard of a model: only its rows and columns of each tensor are ever materialized.

build_model (models/build.py) runs unchanged on a copy of the checkpoint whose config is the rank's
smaller one and whose tensor stream yields the rank's slices, so its shape checks hold the shards to the
plan and its `pack` hook quantizes the shards. Hugging Face safetensors are read by slice, so a rank reads
only its own bytes; the other formats (GGUF, MLX, Meta) dequantize or re-permute a whole tensor first, so
there a rank holds one whole tensor at a time, then keeps its slice and frees the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch import nn

from llamarun.loaders.checkpoint import Checkpoint
from llamarun.parallel.group import ParallelGroup
from llamarun.parallel.layers import make_whole
from llamarun.parallel.plan import ShardPlan, pad_rows


def sharded_checkpoint(ckpt: Checkpoint, plan: ShardPlan) -> Checkpoint:
    """`ckpt` as rank `plan.rank` sees it: the per-rank config, and a stream of the rank's slices."""
    if ckpt.format == "hf" and not ckpt.is_quantized:  # packed formats go through their own loader
        def tensors(dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
            return hf_slices(ckpt, plan, dtype)
    else:
        def tensors(dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
            return ((name, plan.take(name, tensor)) for name, tensor in ckpt.tensors(dtype))
    return dataclasses.replace(ckpt, config=plan.local_config(), tensors=tensors)


def hf_slices(ckpt: Checkpoint, plan: ShardPlan, dtype: torch.dtype,
              rename: Callable[[str], str | None] = lambda name: name) -> Iterator[tuple[str, torch.Tensor]]:
    """Read each safetensors tensor's slice for this rank straight from the file (no whole tensor in memory).

    `rename` maps a checkpoint name to the name yielded, or to None for a tensor this rank never reads (a pipeline
    stage's layers are renumbered from 0, and other stages' tensors are skipped unread).
    """
    from safetensors import safe_open

    from llamarun.loaders import hf_folder

    for file in hf_folder.safetensors_files(ckpt.path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                local = rename(name)
                if local is None:
                    continue
                part = plan.slice_for(name)
                if part is None:
                    yield local, f.get_tensor(name).to(dtype)
                    continue
                view = f.get_slice(name)
                kept = view[part.start:part.end] if part.dim == 0 else view[:, part.start:part.end]
                yield local, pad_rows(kept.to(dtype), part)


def build_shard(ckpt: Checkpoint, plan: ShardPlan, group: ParallelGroup, dtype: torch.dtype = torch.float32,
                on_tensor: Callable[[str], None] | None = None,
                pack: Callable[[nn.Linear], nn.Module] | None = None) -> nn.Module:
    """This rank's LlamaForCausalLM: sharded weights on `group.device`, wrapped to give whole-model logits."""
    from llamarun.models.build import build_model

    model = build_model(sharded_checkpoint(ckpt, plan), dtype, group.device, on_tensor=on_tensor, pack=pack)
    return make_whole(model, plan, group)
