"""Wrappers that make a rank's sharded Llama compute the whole model's outputs.

They wrap whatever module build_model left in place (a plain nn.Linear, or a packed quantized one), so
they compose with quantization, and models/llama.py never learns about ranks (DESIGN decision 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llamarun.parallel.group import ParallelGroup
from llamarun.parallel.plan import ShardPlan


class AllReduceOutput(nn.Module):
    """A row-parallel linear (o_proj, down_proj): each rank's partial product, summed over the ranks."""

    def __init__(self, inner: nn.Module, group: ParallelGroup, name: str) -> None:
        super().__init__()
        self.inner, self.group, self.op_name = inner, group, f"all_reduce after {name}"
        fused = getattr(inner, "forward_silu_input", None)
        if fused is not None:  # keep a packed down_proj's fused activation path (layers/fused.py)
            self.forward_silu_input = lambda gate_up: self.group.all_reduce(fused(gate_up), self.op_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(self.inner(x), self.op_name)  # [tokens, hidden]


class VocabParallelEmbedding(nn.Module):
    """Each rank holds rows [start, start + rows) of the table; ids outside give zeros, then ranks sum."""

    def __init__(self, weight: torch.Tensor, start: int, group: ParallelGroup) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [vocab_per_rank, hidden]
        self.start, self.group = start, group

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start  # [tokens]
        outside = (local < 0) | (local >= self.weight.shape[0])
        rows = F.embedding(local.masked_fill(outside, 0), self.weight)  # [tokens, hidden]
        rows = rows.masked_fill(outside[:, None], 0)
        return self.group.all_reduce(rows, "all_reduce after embed_tokens")


class GatheredLogits(nn.Module):
    """The column-parallel output head: each rank's vocabulary slice of the logits, gathered on every rank.

    Every rank ends with the same [tokens, vocab] logits, so each rank's sampler gives the same answer;
    rank 0's is the one the engine uses. Padding rows of the last slice are cut off.
    """

    def __init__(self, inner: nn.Module, group: ParallelGroup, vocab_size: int) -> None:
        super().__init__()
        self.inner, self.group, self.vocab_size = inner, group, vocab_size

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        local = self.inner(hidden)  # [tokens, vocab_per_rank]
        return self.group.all_gather_last(local, "all_gather of logits")[..., : self.vocab_size]  # [tokens, vocab]


def make_whole(model: nn.Module, plan: ShardPlan, group: ParallelGroup) -> nn.Module:
    """Wrap a rank's sharded LlamaForCausalLM in place so its forward gives the whole model's logits."""
    if plan.world_size == 1:
        return model
    inner = model.model
    table = inner.embed_tokens.weight
    inner.embed_tokens = VocabParallelEmbedding(table, plan.vocab_start, group)
    if plan.config.tie_word_embeddings and isinstance(model.lm_head, nn.Linear):
        model.lm_head.weight = inner.embed_tokens.weight  # keep one copy of the shared shard
    for i, layer in enumerate(inner.layers):
        layer.self_attn.o_proj = AllReduceOutput(layer.self_attn.o_proj, group, f"layer {i} o_proj")
        layer.mlp.down_proj = AllReduceOutput(layer.mlp.down_proj, group, f"layer {i} down_proj")
    model.lm_head = GatheredLogits(model.lm_head, group, plan.config.vocab_size)
    model.config = plan.local_config()  # the KV cache is sized from it: this rank's KV heads only
    model.full_config = plan.config
    return model
