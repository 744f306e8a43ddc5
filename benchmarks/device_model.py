"""A real, loadable checkpoint for GPU benchmarks that need a tokenizer: random weights in a named shape.

`llamarun bench --random-weights` needs no tokenizer (its prompts are random ids), but the grammar and guard
benchmarks do: a grammar masks real token bytes and a guard reads real text. No checkpoint can be downloaded on
the device machine and the default model's file is too large to carry there, so this writes a Hugging Face
folder on the spot: a preset's shape (llamarun/bench/random_weights.py) with random bf16 weights, and the
default model's tokenizer and chat template, exported here once and carried.

    # here, once: the default model's tokenizer as tokenizer.json + tokenizer_config.json
    python benchmarks/device_model.py tokenizer ~/.cache/llamarun/models/smollm2/135m/*.gguf .device/tokenizer
    # on the device: an 8B-shaped folder that `llamarun run|serve PATH` loads
    python benchmarks/device_model.py model llama3.1-8b /tmp/models/8b --tokenizer .device/tokenizer

The vocabulary is the tokenizer's (49,152 tokens for SmolLM2), not the preset's 128,256, so every id the model
can emit has text. Weights are N(0, 0.02) with unit norms, as in `--random-weights`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

SHARD_BYTES = 4 << 30  # the files a real checkpoint ships are a few GB each; keeps the host copy small too


def export_tokenizer(gguf: Path, out: Path) -> None:
    """The GGUF's tokenizer as a Hugging Face tokenizer.json, with its chat template and special tokens."""
    from llamarun.loaders.gguf.reader import read_gguf
    from llamarun.text.gguf_tokenizer import tokenizer_from_gguf

    meta = read_gguf(gguf).metadata
    tok = tokenizer_from_gguf(meta)
    out.mkdir(parents=True, exist_ok=True)
    tok.backend.save(str(out / "tokenizer.json"))
    names = {i: tok.backend.id_to_token(i) for i in sorted(tok.special_ids)}
    config = {
        "chat_template": meta.get("tokenizer.chat_template"),
        "bos_token": names.get(tok.bos_id) if tok.bos_id is not None else None,
        "eos_token": names.get(tok.eos_id) if tok.eos_id is not None else None,
        "add_bos_token": tok.add_bos,
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for i, t in names.items()},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    print(f"wrote {out}: {tok.vocab_size} tokens, bos {tok.bos_id}, eos {tok.eos_id}")


def write_model(shape: str, out: Path, tokenizer: Path, seed: int = 0) -> None:
    """A Hugging Face folder in `shape` with random bf16 weights and the tokenizer from `tokenizer`."""
    import torch
    from safetensors.torch import save_file

    from llamarun.bench.random_weights import PRESETS, WEIGHT_STD

    if shape not in PRESETS:
        raise SystemExit(f"unknown shape {shape!r}; choose one of {', '.join(PRESETS)}")
    spec = json.loads((tokenizer / "tokenizer_config.json").read_text())
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())
    vocab_size = len(vocab["model"]["vocab"]) + sum(1 for t in vocab.get("added_tokens", ())
                                                     if t["content"] not in vocab["model"]["vocab"])
    c = PRESETS[shape]
    ids = {t["content"]: int(i) for i, t in spec["added_tokens_decoder"].items()}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings, "torch_dtype": "bfloat16", "hidden_act": "silu",
        "bos_token_id": ids.get(spec.get("bos_token")), "eos_token_id": ids.get(spec.get("eos_token")),
    }
    if c.rope_scaling is not None:
        rs = c.rope_scaling
        config["rope_scaling"] = {"rope_type": "llama3", "factor": rs.factor, "low_freq_factor": rs.low_freq_factor,
                                  "high_freq_factor": rs.high_freq_factor,
                                  "original_max_position_embeddings": rs.original_max_position_embeddings}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, out / name)

    h, hd = c.hidden_size, c.head_dim
    shapes = {"model.embed_tokens.weight": (vocab_size, h)}
    for layer in range(c.num_layers):
        p = f"model.layers.{layer}."
        shapes.update({p + "self_attn.q_proj.weight": (c.num_heads * hd, h),
                       p + "self_attn.k_proj.weight": (c.num_kv_heads * hd, h),
                       p + "self_attn.v_proj.weight": (c.num_kv_heads * hd, h),
                       p + "self_attn.o_proj.weight": (h, c.num_heads * hd),
                       p + "mlp.gate_proj.weight": (c.intermediate_size, h),
                       p + "mlp.up_proj.weight": (c.intermediate_size, h),
                       p + "mlp.down_proj.weight": (h, c.intermediate_size),
                       p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    shapes["model.norm.weight"] = (h,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab_size, h)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    index: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"model-{len(set(index.values())) + 1:05d}.safetensors"
            save_file(shard, str(out / name))
            index.update(dict.fromkeys(shard, name))
            shard, size = {}, 0

    for name, dims in shapes.items():
        if len(dims) == 1:
            t = torch.ones(dims, dtype=torch.bfloat16)
        else:
            t = (torch.randn(dims, generator=gen, device=device, dtype=torch.float32) * WEIGHT_STD).bfloat16().cpu()
        shard[name] = t
        size += t.numel() * 2
        if size >= SHARD_BYTES:
            flush()
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    total = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out}: {shape} shape, vocab {vocab_size}, {total / 1e9:.1f} GB in {time.perf_counter() - t0:.1f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer", help="export a GGUF's tokenizer as a Hugging Face tokenizer folder")
    t.add_argument("gguf", type=Path)
    t.add_argument("out", type=Path)
    m = sub.add_parser("model", help="write a random-weight Hugging Face folder in a preset's shape")
    m.add_argument("shape")
    m.add_argument("out", type=Path)
    m.add_argument("--tokenizer", type=Path, required=True, help="a folder written by the `tokenizer` command")
    m.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cmd == "tokenizer":
        export_tokenizer(args.gguf, args.out)
    else:
        write_model(args.shape, args.out, args.tokenizer, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
