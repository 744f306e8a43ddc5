"""Tiny random Llama checkpoints written by the tests in every format we load.

The weights are drawn so that MLX 4-bit quantization represents them exactly (each group of inputs
is scale * q + bias with fp16 scale/bias and integer q), so the same model exists losslessly as HF
safetensors, GGUF (F32), MLX 4-bit and Meta consolidated shards, and all four must give the same logits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamarun.loaders.permute import half_split_to_interleaved

GROUP = 32  # MLX group size used by the writers
# A tiny chat template without special tokens, so the tiny byte vocabulary can carry it.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


MERGES = ["Ġ t", "h e", "Ġt he", "i n"]


def byte_vocab() -> list[str]:
    """256 byte-level BPE tokens (GPT-2's byte alphabet, in byte order), then one token per merge."""
    from llamarun.text.byte_level import BYTE_TO_CHAR

    return list(BYTE_TO_CHAR) + [m.replace(" ", "") for m in MERGES]


def add_byte_tokenizer(folder: Path) -> Path:
    """tokenizer.json + tokenizer_config.json for the tiny byte-level vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(byte_vocab())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in MERGES]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return folder


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 260  # 256 byte tokens + the 4 merges below
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    tie_word_embeddings: bool = False
    llama3_rope: bool = False
    rope_theta: float = 500000.0
    max_position_embeddings: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def hf_config(self) -> dict:
        cfg = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "rms_norm_eps": 1e-5, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "torch_dtype": "float32",
            "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        }
        if self.llama3_rope:
            cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        return cfg


def _quantizable(rows: int, cols: int, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """A weight [rows, cols] that MLX 4-bit represents exactly, with its packed form."""
    groups = cols // GROUP
    q = torch.randint(0, 16, (rows, groups, GROUP), generator=gen)
    scales = (torch.rand(rows, groups, 1, generator=gen) * 0.02 + 0.005).half()
    biases = (-(scales.float() * 7.5) + torch.randn(rows, groups, 1, generator=gen) * 0.001).half()
    weight = (scales.float() * q.float() + biases.float()).reshape(rows, cols)
    words = q.reshape(rows, cols // 8, 8).to(torch.int64)
    packed = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for j in range(8):
        packed |= words[..., j] << (4 * j)
    packed = packed.to(torch.uint32) if hasattr(torch, "uint32") else packed
    return weight, {"weight": packed, "scales": scales.squeeze(-1), "biases": biases.squeeze(-1)}


def make_weights(spec: TinySpec, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """HF-named float32 weights, and the MLX packed form of every linear/embedding."""
    gen = torch.Generator().manual_seed(seed)
    h, i, hd = spec.hidden_size, spec.intermediate_size, spec.head_dim
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, h)}
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        shapes[p + "self_attn.q_proj.weight"] = (spec.num_heads * hd, h)
        shapes[p + "self_attn.k_proj.weight"] = (spec.num_kv_heads * hd, h)
        shapes[p + "self_attn.v_proj.weight"] = (spec.num_kv_heads * hd, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, spec.num_heads * hd)
        shapes[p + "mlp.gate_proj.weight"] = (i, h)
        shapes[p + "mlp.up_proj.weight"] = (i, h)
        shapes[p + "mlp.down_proj.weight"] = (h, i)
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, h)
    weights, packed = {}, {}
    for name, (rows, cols) in shapes.items():
        weights[name], packed[name] = _quantizable(rows, cols, gen)
    for layer in range(spec.num_layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            weights[f"model.layers.{layer}.{norm}.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
    weights["model.norm.weight"] = 1 + 0.1 * torch.randn(h, generator=gen)
    return weights, packed


def write_hf(spec: TinySpec, weights: dict[str, torch.Tensor], folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec.hf_config()))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    return folder


def write_hf_sharded(spec: TinySpec, weights: dict[str, torch.Tensor], folder: Path, shards: int = 3) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec.hf_config()))
    names = list(weights)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({k: weights[k].contiguous() for k in part}, str(folder / file))
        weight_map.update({k: file for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def write_mlx(spec: TinySpec, weights: dict[str, torch.Tensor], packed: dict[str, dict], folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = spec.hf_config() | {"quantization": {"group_size": GROUP, "bits": 4}}
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors = {}
    for name, w in weights.items():
        if name in packed:
            module = name.removesuffix(".weight")
            tensors[f"{module}.weight"] = packed[name]["weight"]
            tensors[f"{module}.scales"] = packed[name]["scales"]
            tensors[f"{module}.biases"] = packed[name]["biases"]
        else:
            tensors[name] = w
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


_GGUF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def gguf_name(name: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    _, _, layer, rest = name.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def write_gguf(spec: TinySpec, weights: dict[str, torch.Tensor], path: Path,
               extra_keys: Callable[[Any], None] | None = None) -> Path:
    """A GGUF of `weights`; `extra_keys(writer)` may add metadata keys (such as llama.pooling_type)."""
    import gguf

    from llamarun.config import RopeScaling, base_inv_freq

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(spec.max_position_embeddings)
    w.add_embedding_length(spec.hidden_size)
    w.add_block_count(spec.num_layers)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_heads)
    w.add_head_count_kv(spec.num_kv_heads)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(spec.vocab_size)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(byte_vocab())
    w.add_token_types([1] * len(byte_vocab()))
    w.add_token_merges(MERGES)
    w.add_chat_template(CHAT_TEMPLATE)
    if extra_keys is not None:
        extra_keys(w)
    if spec.llama3_rope:
        base = base_inv_freq(spec.rope_theta, spec.head_dim)
        scaled = RopeScaling(factor=8.0).scale(base)
        factors = np.array([b / s for b, s in zip(base, scaled, strict=True)], dtype=np.float32)
        w.add_tensor("rope_freqs.weight", factors)
    for name, t in weights.items():
        t = t.float()
        if name.endswith("q_proj.weight"):
            t = half_split_to_interleaved(t, spec.num_heads)
        elif name.endswith("k_proj.weight"):
            t = half_split_to_interleaved(t, spec.num_kv_heads)
        w.add_tensor(gguf_name(name), t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


_META_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
               "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
               "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
               "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
               "post_attention_layernorm": "ffn_norm"}


def write_meta(spec: TinySpec, weights: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> Path:
    """Meta layout, split across `shards` model-parallel ranks the way Meta's reference splits them."""
    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, torch.Tensor] = {}
    fixed = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
    for name, t in weights.items():
        if name.endswith("q_proj.weight"):
            t = half_split_to_interleaved(t, spec.num_heads)
        elif name.endswith("k_proj.weight"):
            t = half_split_to_interleaved(t, spec.num_kv_heads)
        if name in fixed:
            meta[fixed[name]] = t
        else:
            _, _, layer, rest = name.split(".", 3)
            meta[f"layers.{layer}.{_META_LAYER[rest.removesuffix('.weight')]}.weight"] = t
    if spec.tie_word_embeddings:
        meta["output.weight"] = weights["model.embed_tokens.weight"]
    for rank in range(shards):
        part = {}
        for name, t in meta.items():
            if t.dim() == 1:
                part[name] = t.clone()
            elif "attention.wo" in name or "feed_forward.w2" in name:
                part[name] = t.chunk(shards, dim=1)[rank].clone()
            else:
                part[name] = t.chunk(shards, dim=0)[rank].clone()
        torch.save(part, folder / f"consolidated.{rank:02d}.pth")
    params = {"dim": spec.hidden_size, "n_layers": spec.num_layers, "n_heads": spec.num_heads,
              "n_kv_heads": spec.num_kv_heads, "vocab_size": spec.vocab_size, "norm_eps": 1e-5,
              "rope_theta": spec.rope_theta, "use_scaled_rope": spec.llama3_rope, "multiple_of": 32}
    (folder / "params.json").write_text(json.dumps(params))
    return folder
