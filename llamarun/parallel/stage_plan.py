"""Which layers a pipeline stage runs, and which checkpoint tensors it reads under which names.

Layers are split into contiguous ranges as equal as they can be (the first stages take one more when
the count does not divide). The first stage also holds the embedding; the last the final norm and the
output head (with tied embeddings that is the embedding table, so the last stage reads it as well).
A stage's model is an ordinary Llama of `num_layers = len(its range)`: its layers are renumbered from
0, so its KV cache holds its own layers only and models/llama.py needs no change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llamarun.config import ModelConfig
from llamarun.errors import LlamarunError

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class StagePlan:
    """Stage `stage` of `stages` over a model of `config` (the whole model's config)."""

    config: ModelConfig
    stage: int
    stages: int

    def __post_init__(self) -> None:
        if self.stages > self.config.num_layers:
            raise LlamarunError(f"--pp {self.stages} asks for more stages than the model's "
                                f"{self.config.num_layers} layers", "give each stage at least one layer")

    @property
    def layers(self) -> range:
        """The whole model's layer numbers this stage runs."""
        base, extra = divmod(self.config.num_layers, self.stages)
        start = self.stage * base + min(self.stage, extra)
        return range(start, start + base + (1 if self.stage < extra else 0))

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.stages - 1

    @property
    def holds_embedding(self) -> bool:
        """The table is read here: the first stage embeds; with tied weights the last stage's head is it."""
        return self.is_first or (self.is_last and self.config.tie_word_embeddings)

    def local_config(self, config: ModelConfig | None = None) -> ModelConfig:
        """`config` (default: the whole model's; pass a tensor-parallel rank's) with this stage's layer count."""
        return (config or self.config).replace(num_layers=len(self.layers))

    def local_name(self, name: str) -> str | None:
        """The name checkpoint tensor `name` has in this stage's model, or None when the stage does not read it."""
        match = _LAYER.match(name)
        if match:
            layer = int(match.group(1))
            if layer not in self.layers:
                return None
            return f"model.layers.{layer - self.layers.start}.{match.group(2)}"
        if name == "model.embed_tokens.weight":
            return name if self.holds_embedding else None
        if name in ("model.norm.weight", "lm_head.weight"):
            return name if self.is_last else None
        return name  # derived tensors (rotary inv_freq): the builder skips them

    def placeholders(self) -> list[str]:
        """Tensors the Llama skeleton expects that this stage never uses (filled with zero-stride stand-ins)."""
        names = []
        if not self.holds_embedding:
            names.append("model.embed_tokens.weight")
        if not self.is_last:
            names.append("model.norm.weight")
            if not self.config.tie_word_embeddings:
                names.append("lm_head.weight")
        return names
