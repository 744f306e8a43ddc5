"""Start-up from a real safetensors checkpoint: how long `llamarun run` takes until its first token on a GPU.

The random-weight benchmark builds weights in place; users load files. This writes a Llama-shaped Hugging
Face folder with random bf16 weights (config.json, four safetensors shards, a byte-level tokenizer padded with
reserved tokens to the model's vocabulary), then times `llamarun run FOLDER "Hello" --verbose` in fresh
processes: once after dropping the page cache (when the machine allows it: the weights come from disk) and
once warm (from the page cache). Reported per run: seconds from process start to the first streamed token,
the whole run, and the load phases `--verbose` prints.

    PYTHONPATH=. python benchmarks/gpu_startup.py --shape llama3.1-8b --json $OUT/startup.json
    python benchmarks/gpu_startup.py --shape tiny --device cpu --folder /tmp/tiny-random           # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamarun.bench.random_weights import PRESETS  # noqa: E402  (after the path insert)

SHARDS = 4
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def hf_config(name: str) -> dict:
    c = PRESETS[name]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "max_position_embeddings":
        c.max_position_embeddings, "tie_word_embeddings": c.tie_word_embeddings, "torch_dtype": "bfloat16",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "bos_token_id": min(128000, c.vocab_size - 2), "eos_token_id": min(128001, c.vocab_size - 1),
    }


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """Byte-level BPE over the 256 bytes, then reserved special tokens up to the model's vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True) for i in range(len(vocab), vocab_size)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))


def write_checkpoint(folder: Path, name: str, device: str) -> dict:
    """The HF folder with random N(0, 0.02) bf16 weights; returns bytes and seconds."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(name)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    write_tokenizer(folder, config["vocab_size"])
    c = PRESETS[name]
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size), "model.norm.weight": (c.hidden_size,),
              "lm_head.weight": (c.vocab_size, c.hidden_size)}
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (c.hidden_size,), p + "post_attention_layernorm.weight":
                   (c.hidden_size,), p + "self_attn.q_proj.weight": (q, c.hidden_size),
                   p + "self_attn.k_proj.weight": (kv, c.hidden_size),
                   p + "self_attn.v_proj.weight": (kv, c.hidden_size),
                   p + "self_attn.o_proj.weight": (c.hidden_size, q),
                   p + "mlp.gate_proj.weight": (c.intermediate_size, c.hidden_size),
                   p + "mlp.up_proj.weight": (c.intermediate_size, c.hidden_size),
                   p + "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size)}
    names = list(shapes)
    gen = torch.Generator(device=device).manual_seed(0)
    index, total = {}, 0
    for s in range(SHARDS):
        part = names[s::SHARDS]
        tensors = {}
        for n in part:
            t = (torch.ones(shapes[n], device=device) if n.endswith("norm.weight")
                 else torch.randn(shapes[n], device=device, generator=gen) * 0.02)
            tensors[n] = t.to(torch.bfloat16).cpu()
            total += tensors[n].numel() * 2
        file = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        index |= {n: file for n in part}
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": index}))
    return {"bytes": total, "write_s": round(time.perf_counter() - t0, 1)}


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed_run(folder: Path, device: str) -> dict:
    """One fresh `llamarun run`, timed from process start to its first token and to its end."""
    cmd = [sys.executable, "-m", "llamarun.cli.main", "run", str(folder), "Hello", "--verbose", "--device", device,
           "--num-predict", "16", "--temperature", "0", "--ctx", "2048"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.read(1)
    first_s = time.perf_counter() - t0
    rest, err = proc.communicate()
    total_s = time.perf_counter() - t0
    lines = err.decode(errors="replace").splitlines()
    stats = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines if ":" in line}
    return {"returncode": proc.returncode, "first_token_s": round(first_s, 2) if first else None,
            "total_s": round(total_s, 2), "verbose": stats, "stderr_tail": lines[-25:],
            "output": (first + rest).decode(errors="replace")[:200]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama3.1-8b", choices=sorted(PRESETS))
    ap.add_argument("--folder", default="/tmp/llamarun-startup")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    opts = ap.parse_args()
    folder = Path(opts.folder)
    out = {"shape": opts.shape, "device": opts.device, "date": time.strftime("%Y-%m-%d"),
           "gpu": torch.cuda.get_device_name() if opts.device.startswith("cuda") else None}
    out["checkpoint"] = write_checkpoint(folder, opts.shape, opts.device)
    print("checkpoint", out["checkpoint"], flush=True)
    out["cold_cache"] = drop_page_cache()
    out["cold"] = timed_run(folder, opts.device)
    print("cold", json.dumps({k: v for k, v in out["cold"].items() if k != "stderr_tail"}), flush=True)
    out["warm"] = timed_run(folder, opts.device)
    print("warm", json.dumps({k: v for k, v in out["warm"].items() if k != "stderr_tail"}), flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps(out, indent=1))
    return 0 if out["cold"]["returncode"] == 0 and out["warm"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
