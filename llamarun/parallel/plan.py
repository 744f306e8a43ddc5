"""Which part of each checkpoint tensor rank r of N keeps, and the config of the model it builds.

Column-parallel (each rank keeps a range of output rows): q/k/v by heads, gate/up by intermediate rows,
the output head by vocabulary rows. Row-parallel (each rank keeps a range of input columns, and the
outputs are summed over ranks): o_proj and down_proj. The embedding is vocabulary-parallel like the head:
at 70B it is 2.1 GB in bf16, and split it costs one all-reduce of [tokens, hidden] per step, against two
per layer already. Norms are replicated. With fewer KV heads than ranks, each rank keeps the one KV head
its query heads read, so KV heads are replicated over N / kv_heads ranks.

The per-rank model is an ordinary Llama of a smaller config (fewer heads, a narrower MLP, a slice of the
vocabulary), so models/llama.py and the KV cache need no change: their head counts follow the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from llamarun.config import ModelConfig
from llamarun.errors import LlamarunError


@dataclass(frozen=True)
class Slice:
    """Keep [start, end) along `dim`, then pad with zero rows up to `padded` (dim 0 only; 0: no padding)."""

    dim: int
    start: int
    end: int
    padded: int = 0


@dataclass(frozen=True)
class ShardPlan:
    """Rank `rank` of `world_size` over a model of `config` (the whole model's config)."""

    config: ModelConfig
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        c, n = self.config, self.world_size
        problems = []
        if c.num_heads % n:
            problems.append(f"{c.num_heads} attention heads")
        if c.num_kv_heads % n and n % c.num_kv_heads:
            problems.append(f"{c.num_kv_heads} key/value heads (neither divides the other)")
        if c.intermediate_size % n:
            problems.append(f"an MLP width of {c.intermediate_size}")
        if problems:
            raise LlamarunError(f"tensor parallelism over {n} ranks cannot split {' and '.join(problems)}",
                                "choose a --tp that divides the model's head counts, e.g. 2 or 4")

    @property
    def local_heads(self) -> int:
        return self.config.num_heads // self.world_size

    @property
    def local_kv_heads(self) -> int:
        return max(1, self.config.num_kv_heads // self.world_size)

    @property
    def kv_head_start(self) -> int:
        """The first KV head this rank keeps: the one its first query head reads when KV heads are replicated."""
        c = self.config
        if c.num_kv_heads >= self.world_size:
            return self.rank * self.local_kv_heads
        return self.rank * c.num_kv_heads // self.world_size

    @property
    def vocab_per_rank(self) -> int:
        return -(-self.config.vocab_size // self.world_size)

    @property
    def vocab_start(self) -> int:
        return min(self.rank * self.vocab_per_rank, self.config.vocab_size)

    def local_config(self) -> ModelConfig:
        """The config of this rank's model: its heads, its MLP rows, its (padded) slice of the vocabulary."""
        return dataclasses.replace(self.config, num_heads=self.local_heads, num_kv_heads=self.local_kv_heads,
                                   intermediate_size=self.config.intermediate_size // self.world_size,
                                   vocab_size=self.vocab_per_rank)

    def slice_for(self, name: str) -> Slice | None:
        """What rank keeps of checkpoint tensor `name` (HF names); None: the whole tensor (norms)."""
        c, r, hd = self.config, self.rank, self.config.head_dim
        if name.endswith("q_proj.weight") or name.endswith("o_proj.weight"):
            width = self.local_heads * hd
            return Slice(0 if name.endswith("q_proj.weight") else 1, r * width, (r + 1) * width)
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            start = self.kv_head_start * hd
            return Slice(0, start, start + self.local_kv_heads * hd)
        if name.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")):
            width = c.intermediate_size // self.world_size
            return Slice(1 if name.endswith("down_proj.weight") else 0, r * width, (r + 1) * width)
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            start = self.vocab_start
            return Slice(0, start, min(start + self.vocab_per_rank, c.vocab_size), self.vocab_per_rank)
        return None

    def take(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of a whole checkpoint tensor, as a fresh tensor (the whole one can be freed)."""
        part = self.slice_for(name)
        if part is None:
            return tensor
        kept = tensor.narrow(part.dim, part.start, part.end - part.start)
        return pad_rows(kept.clone(memory_format=torch.contiguous_format), part)


def pad_rows(kept: torch.Tensor, part: Slice) -> torch.Tensor:
    """Zero rows after `kept` up to `part.padded` rows: the last vocabulary shard when N does not divide it."""
    missing = part.padded - kept.shape[0] if part.padded else 0
    if missing <= 0:
        return kept
    return torch.cat([kept, kept.new_zeros((missing, *kept.shape[1:]))])  # [padded, hidden]

