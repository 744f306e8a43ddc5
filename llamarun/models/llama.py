"""The Llama decoder (Llama 2/3.x, SmolLM2, TinyLlama and friends).

Tokens arrive flattened, `[num_tokens]`, with their positions: one sequence or many packed side by
side. q/k/v and gate/up are merged linears (layers/linear.py); checkpoints keep naming them apart.
Keys and values go to whatever attention backend the caller made current (attention/backend.py),
so this file knows nothing of caches, batching, devices or quantization.
"""

from __future__ import annotations

import torch
from torch import nn

from llamarun.attention.backend import current_backend
from llamarun.config import ModelConfig
from llamarun.layers.fused import down_projection
from llamarun.layers.linear import MergedLinear
from llamarun.layers.norm import RMSNorm
from llamarun.layers.rotary import RotaryEmbedding


class LlamaAttention(nn.Module):
    """Grouped-query self-attention: `num_heads` query heads share `num_kv_heads` key/value heads."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        h, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.qkv_proj = MergedLinear(h, {"q_proj": q, "k_proj": kv, "v_proj": kv})
        self.qkv_sizes = [q, kv, kv]  # kept here: quantization may swap qkv_proj for a packed module
        self.o_proj = nn.Linear(q, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)  # [tokens, heads, head_dim]
        k = k.view(n, self.num_kv_heads, self.head_dim)  # [tokens, kv_heads, head_dim]
        v = v.reshape(n, self.num_kv_heads, self.head_dim)
        # The backend rotates q and k (in its own kernel where it can) and attends: [tokens, heads * head_dim].
        return self.o_proj(current_backend().attend(self.layer, q, k, v, cos, sin, feeds=self.o_proj))


class LlamaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        i = config.intermediate_size
        self.gate_up_proj = MergedLinear(config.hidden_size, {"gate_proj": i, "up_proj": i})
        self.down_proj = nn.Linear(i, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return down_projection(self.down_proj, self.gate_up_proj(x))  # [tokens, 2 * intermediate] -> [tokens, hidden]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the previous layer's output, not yet added to `residual`, the stream before it (None at layer 0).

        Returns this layer's output and the stream before it: each add is fused into the next norm.
        """
        h, residual = self.input_layernorm(x, residual, feeds=self.self_attn.qkv_proj)
        h, residual = self.post_attention_layernorm(self.self_attn(h, cos, sin), residual, feeds=self.mlp.gate_up_proj)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # [tokens, hidden]
        cos, sin = self.rotary(positions, x.dtype)  # [tokens, head_dim] each
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin)
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    """Decoder plus output head; `tie_word_embeddings` shares the head with the embedding table."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.is_output_head = True  # quantization may hold the head apart from the decoder (quant/modes.py)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                logits_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [len(logits_indices) or tokens, vocab] in float32.

        `logits_indices` picks the rows that need logits (the last token of each sequence when
        generating), so a long prompt does not pay for a vocab-sized matmul at every position.
        """
        hidden = self.model(input_ids, positions)  # [tokens, hidden]
        if logits_indices is not None:
            hidden = hidden[logits_indices]
        return self.lm_head(hidden).float()
