"""The baseline for many GPUs: Hugging Face Transformers' Llama spread with device_map="auto".

This is how the article runs Llama 3.3 70B on two H200s: accelerate places whole decoder layers on the
GPUs in order and moves the activations between them, so the GPUs work one after another. The model is
Transformers' own LlamaForCausalLM in the exact 70B shape with random bf16 weights (N(0, 0.02), norms
ones): built on the meta device, the placement computed by accelerate's infer_auto_device_map (what
device_map="auto" calls), each layer's tensors allocated and filled on its GPU, then dispatch_model adds
the hooks that move activations. No checkpoint is read, so only generation is timed.

Timing: greedy `generate()` of a random prompt with max_new_tokens=1 (prefill) and =N, each after a warm-up;
decode tokens/s = (N - 1) * batch / (t_N - t_1). Batch 1 and a padded batch of --batch prompts (HF's
static batch: the whole batch starts and ends together).

    python3 benchmarks/peer_hf_device_map.py --shape llama3.3-70b --json $OUT/hf.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WEIGHT_STD = 0.02


def build(shape: str, max_gib: float) -> tuple[torch.nn.Module, dict]:
    from accelerate import dispatch_model, infer_auto_device_map
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamarun.bench.random_weights import preset_config

    c = preset_config(shape)
    config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                         num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
                         rope_theta=c.rope_theta, max_position_embeddings=c.max_position_embeddings,
                         tie_word_embeddings=c.tie_word_embeddings, torch_dtype=torch.bfloat16)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    memory = {i: f"{max_gib}GiB" for i in range(torch.cuda.device_count())}
    device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=["LlamaDecoderLayer"],
                                       dtype=torch.bfloat16)
    for name, device in device_map.items():
        module = model.get_submodule(name) if name else model
        module.to_empty(device=torch.device("cuda", device) if isinstance(device, int) else device,
                        recurse=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, WEIGHT_STD)
    for name, module in list(model.named_modules()):  # rotary buffers were on meta: rebuild them where they live
        if type(module).__name__.endswith("RotaryEmbedding"):
            parent, _, child = name.rpartition(".")
            fresh = type(module)(model.config).to(module.inv_freq.device)
            setattr(model.get_submodule(parent) if parent else model, child, fresh)
    model = dispatch_model(model, device_map=device_map)
    placed = {}
    for device in device_map.values():
        placed[str(device)] = placed.get(str(device), 0) + 1
    return model.eval(), {"modules_per_device": placed}


@torch.inference_mode()
def timed_generate(model: torch.nn.Module, ids: torch.Tensor, new: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                   do_sample=False, pad_token_id=0)
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama3.3-70b")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-gib", type=float, default=120.0, help="accelerate's max_memory per GPU")
    p.add_argument("--json")
    args = p.parse_args()
    import transformers

    t0 = time.perf_counter()
    model, placement = build(args.shape, args.max_gib)
    build_s = time.perf_counter() - t0
    first = next(model.parameters()).device
    record = {"benchmark": "peer_hf_device_map", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "gpus": f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}", "shape": args.shape,
              "transformers": transformers.__version__, "torch": torch.__version__, "build_seconds": build_s,
              "placement": placement, "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
              "levels": []}
    gen = torch.Generator().manual_seed(0)
    for batch in (1, args.batch):
        ids = torch.randint(1, 128000, (batch, args.prompt_tokens), generator=gen).to(first)
        timed_generate(model, ids, 2)  # warm-up
        t1 = timed_generate(model, ids, 1)
        tn = timed_generate(model, ids, args.output_tokens)
        decode = (args.output_tokens - 1) * batch / (tn - t1)
        level = {"batch": batch, "prefill_seconds": t1, "generate_seconds": tn, "decode_tok_s": decode,
                 "output_tok_s": args.output_tokens * batch / tn}
        record["levels"].append(level)
        print(f"HF device_map=auto {args.shape} batch {batch}: decode {decode:.2f} tok/s, "
              f"end to end {level['output_tok_s']:.2f} out tok/s ({tn:.1f} s for {args.output_tokens} tokens)",
              flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
