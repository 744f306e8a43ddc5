"""One pipeline stage's model: its layers (and the embedding or the head where the stage has them).

The stage is built by models/build.py unchanged, from a checkpoint view whose config has the stage's
layer count (and, with tensor parallelism, the rank's heads) and whose tensor stream yields only the
stage's tensors, renamed to layers 0..k-1. The Llama skeleton still asks for an embedding, a final norm
and a head; a stage that never uses them gets zero-stride stand-ins (one element of memory each), which
`StageModel` then drops. Hugging Face safetensors are read by name and slice, so a rank reads only its
stage's tensors and its tensor-parallel slices of them; the other formats stream every tensor whole
(their dequantization is per tensor), and the rank keeps only its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch import nn

from llamarun.config import ModelConfig
from llamarun.loaders.checkpoint import Checkpoint
from llamarun.parallel.group import ParallelGroup
from llamarun.parallel.layers import make_whole
from llamarun.parallel.load import hf_slices
from llamarun.parallel.plan import ShardPlan
from llamarun.parallel.stage_link import StageLink
from llamarun.parallel.stage_plan import StagePlan


class StageModel(nn.Module):
    """A stage's part of LlamaForCausalLM; `config` is the stage's (its layers, its rank's heads)."""

    def __init__(self, model: nn.Module, stage: StagePlan, link: StageLink) -> None:
        super().__init__()
        self.config = model.config  # the KV cache is sized from it: this stage's layers, this rank's KV heads
        self.stage, self.link = stage, link
        inner = model.model
        self.embed_tokens = inner.embed_tokens if stage.is_first else None
        self.layers = inner.layers
        self.rotary = inner.rotary
        self.norm = inner.norm if stage.is_last else None
        self.lm_head = model.lm_head if stage.is_last else None
        self.dtype = inner.layers[0].input_layernorm.weight.dtype

    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run this stage's layers: [2, tokens, hidden], the last layer's output and the residual stream."""
        if self.embed_tokens is not None:
            x, residual = self.embed_tokens(input_ids), None  # [tokens, hidden]
        else:
            shape = (2, input_ids.shape[0], self.config.hidden_size)
            x, residual = self.link.recv_hidden(shape, self.dtype).unbind(0)  # [tokens, hidden] each
        cos, sin = self.rotary(positions, x.dtype)  # [tokens, head_dim] each
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin)
        return torch.stack([x, residual])  # [2, tokens, hidden]

    def logits(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The last stage's logits [len(rows), vocab] in float32, from `hidden()`'s output."""
        assert self.norm is not None and self.lm_head is not None
        out = self.norm(hidden[0], hidden[1])[0]  # [tokens, hidden]
        return self.lm_head(out[rows]).float()


def stage_checkpoint(ckpt: Checkpoint, stage: StagePlan, shard: ShardPlan, device: torch.device) -> Checkpoint:
    """`ckpt` as one rank sees it: the rank's config, its stage's tensors (renamed) and its slices of them."""
    local = stage.local_config(shard.local_config())
    sliced = ckpt.format == "hf" and not ckpt.is_quantized  # packed formats go through their own loader

    def tensors(dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
        yield from _stand_ins(stage, local, dtype, device)
        # safetensors: only this stage's tensors, and only this rank's slice of each, read from the files
        source = (hf_slices(ckpt, shard, dtype, rename=stage.local_name) if sliced
                  else _stage_tensors(ckpt, stage, shard, dtype))
        yield from source

    return dataclasses.replace(ckpt, config=local, tensors=tensors, packed_source=None)


def _stand_ins(stage: StagePlan, local: ModelConfig, dtype: torch.dtype, device: torch.device
               ) -> Iterator[tuple[str, torch.Tensor]]:
    """Zero-stride tensors of the shapes the skeleton wants, for the parts this stage drops."""
    zero = torch.zeros((), dtype=dtype, device=device)
    shapes = {"model.embed_tokens.weight": (local.vocab_size, local.hidden_size),
              "lm_head.weight": (local.vocab_size, local.hidden_size), "model.norm.weight": (local.hidden_size,)}
    for name in stage.placeholders():
        yield name, zero.expand(shapes[name])


def _stage_tensors(ckpt: Checkpoint, stage: StagePlan, shard: ShardPlan, dtype: torch.dtype
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in ckpt.tensors(dtype):
        local = stage.local_name(name)
        if local is not None:
            yield local, shard.take(name, tensor)


def _skip_stand_ins(pack: Callable[[nn.Linear], nn.Module] | None) -> Callable[[nn.Linear], nn.Module] | None:
    """`pack`, except for a stand-in head (zero stride): packing it would allocate the whole of it."""
    if pack is None:
        return None

    def packed(module: nn.Linear) -> nn.Module:
        return module if module.weight.stride(-1) == 0 and module.weight.numel() > 1 else pack(module)

    return packed


def build_stage(ckpt: Checkpoint, stage: StagePlan, shard: ShardPlan, tp_group: ParallelGroup, link: StageLink,
                dtype: torch.dtype = torch.float32, on_tensor: Callable[[str], None] | None = None,
                pack: Callable[[nn.Linear], nn.Module] | None = None) -> StageModel:
    """This rank's stage model: its layers' shards on `tp_group.device`, tensor-parallel wrappers inside."""
    from llamarun.models.build import build_model

    view = stage_checkpoint(ckpt, stage, shard, tp_group.device)
    model = build_model(view, dtype, tp_group.device, on_tensor=on_tensor, pack=_skip_stand_ins(pack))
    local_config = model.config
    model = make_whole(model, shard, tp_group)
    model.config = local_config  # make_whole sets the rank's config with every layer; keep the stage's
    return StageModel(model, stage, link)
