"""GGUF files (llama.cpp, Ollama) as a Checkpoint: llama.cpp tensor names mapped to Hugging Face ones."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from llamarun.config import ModelConfig
from llamarun.errors import ConfigMismatchError
from llamarun.loaders.checkpoint import Checkpoint, is_linear_weight
from llamarun.loaders.gguf.ggml_types import GGMLType
from llamarun.loaders.gguf.reader import GGUFFile, read_gguf

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# Tensors llama.cpp writes that carry no weights of ours (rope_freqs is folded into the config).
_IGNORED = {"rope_freqs.weight"}
_FLOAT_TYPES = {GGMLType.F32, GGMLType.F16, GGMLType.BF16}


def hf_name(gguf_name: str) -> str | None:
    """The HF name of a llama.cpp tensor name, or None for one we do not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def quantization_label(f: GGUFFile) -> str:
    """Most common tensor type among 2-D weights, e.g. 'Q4_K' (mixes shown as 'Q4_K+Q6_K')."""
    counts: dict[str, int] = {}
    for info in f.tensors.values():
        if len(info.shape) == 2:
            name = GGMLType(info.ggml_type).name
            counts[name] = counts.get(name, 0) + info.nbytes
    ranked = sorted(counts, key=counts.get, reverse=True)  # type: ignore[arg-type]
    return "+".join(ranked[:2]) if ranked else "unknown"


def _tokenizer(meta: dict):
    from llamarun.text.gguf_tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(meta)


def open_gguf(path: Path) -> Checkpoint:
    f = read_gguf(path)
    meta = f.metadata
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = int(meta.get("llama.vocab_size") or (len(tokens) if tokens is not None else 0))
    factors = None
    if "rope_freqs.weight" in f.tensors:
        from llamarun.loaders.gguf.dequant import load_tensor

        factors = load_tensor(f, "rope_freqs.weight").tolist()
    config = ModelConfig.from_gguf(meta, vocab_size=vocab, tied="output.weight" not in f.tensors,
                                   rope_freq_factors=factors)
    names = {}
    for gguf_name in f.tensors:
        name = hf_name(gguf_name)
        if name is not None:
            names[name] = gguf_name
        elif gguf_name not in _IGNORED and not gguf_name.endswith("attn_rot_embd"):
            raise ConfigMismatchError(f"{path.name} has an unexpected tensor '{gguf_name}'",
                                      "it may not be a plain Llama model")

    def tensors(dtype) -> Iterator[tuple[str, object]]:
        from llamarun.loaders.gguf.dequant import load_tensor
        from llamarun.loaders.permute import interleaved_to_half_split

        for name, gguf_name in names.items():
            t = load_tensor(f, gguf_name, dtype)
            if name.endswith("q_proj.weight"):
                t = interleaved_to_half_split(t, config.num_heads)
            elif name.endswith("k_proj.weight"):
                t = interleaved_to_half_split(t, config.num_kv_heads)
            yield name, t

    def packed(dtype) -> Iterator[tuple[str, object]]:
        from llamarun.loaders.gguf.packed import packed_gguf_tensors

        yield from packed_gguf_tensors(f, names, config, dtype, report)

    from llamarun.quant.convert.plan import gguf_plan
    from llamarun.quant.convert.report import PackingReport

    report = PackingReport()
    linear_types = [f.tensors[g].type_name for n, g in names.items() if is_linear_weight(n)]
    extra = [meta.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                   "tokenizer.ggml.eom_token_id")]
    return Checkpoint(
        format="gguf", path=path, config=config, tensor_names=list(names), tensors=tensors,
        make_tokenizer=lambda: _tokenizer(meta),
        chat_template=meta.get("tokenizer.chat_template"),
        extra_stop_ids=tuple(int(i) for i in extra if i is not None),
        quantization=quantization_label(f),
        is_quantized=any(len(t.shape) == 2 and t.ggml_type not in _FLOAT_TYPES for t in f.tensors.values()),
        packed_source=packed, packing=report, packing_plan=gguf_plan(linear_types),
    )
