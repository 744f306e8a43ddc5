"""The peer for batch-1 decode: gpt-fast on a Llama 3.1 8B-shaped model with random bf16 weights.

gpt-fast (github.com/pytorch-labs/gpt-fast) is imported from a local copy that is never part of this
repository (`--gpt-fast DIR`, e.g. .peers/gpt-fast). Its own model.py builds the model and its own
generate.py generates, timed the way its `main()` does: `decode_one_token` compiled with
mode="reduce-overhead", fullgraph=True; one warm-up generation, which pays the compile and is reported
apart; then timed generations of a random prompt, tokens/s = new tokens / seconds of `generate()`
(prefill included, gpt-fast's own figure). Prefill is also timed alone, which gives the decode-only rate.
Sampling is gpt-fast's default (temperature 0.8, top-k 200). Weights: N(0, 0.02), norms ones, built on
the meta device and materialized on the device, like `llamarun bench --random-weights`.

    python benchmarks/peer_gpt_fast.py --gpt-fast .peers/gpt-fast --json peer.json
    python benchmarks/peer_gpt_fast.py --gpt-fast .peers/gpt-fast --quantize int4 --json peer-int4.json
    python benchmarks/peer_gpt_fast.py --gpt-fast .peers/gpt-fast --tiny --no-compile --device cpu   # smoke test

Prints one JSON object last (and writes it to --json, also after each stage, so a run killed midway
keeps what it measured).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

# Llama 3.1 8B in gpt-fast's terms (values from the model's config.json); `tiny` matches llamarun's toy shape.
LLAMA31_8B = dict(block_size=131072, n_layer=32, n_head=32, n_local_heads=8, dim=4096, intermediate_size=14336,
                  vocab_size=128256, rope_base=500000,
                  rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192))
TINY = dict(block_size=4096, n_layer=2, n_head=4, n_local_heads=2, dim=64, intermediate_size=160, vocab_size=512,
            rope_base=500000, rope_scaling=LLAMA31_8B["rope_scaling"])
CONFIG_NAME = "llama-3.1-8b"  # gpt-fast's transformer_configs entry for this shape
WEIGHT_STD = 0.02


def import_gpt_fast(folder: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """gpt-fast's model and generate modules, from `folder`.

    generate.py imports its tokenizer module (sentencepiece, tiktoken) at the top; prompts here are random
    ids, so a stand-in module answers that import and no tokenizer package is needed.
    """
    sys.path.insert(0, str(folder.resolve()))
    stand_in = types.ModuleType("tokenizer")

    def get_tokenizer(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("this benchmark feeds random token ids; no tokenizer is loaded")

    stand_in.get_tokenizer = get_tokenizer  # type: ignore[attr-defined]
    sys.modules.setdefault("tokenizer", stand_in)
    # generate.py still uses the deprecated torch.backends.cuda.sdp_kernel; its warning is noise here.
    warnings.filterwarnings("ignore", message=r".*sdp_kernel.*", category=FutureWarning)
    return importlib.import_module("model"), importlib.import_module("generate")


def model_args(gf_model: types.ModuleType, tiny: bool) -> tuple[Any, str]:
    """gpt-fast's ModelArgs for the shape, from its own config table when that entry matches, else explicit."""
    wanted = TINY if tiny else LLAMA31_8B
    if not tiny and CONFIG_NAME in getattr(gf_model, "transformer_configs", {}):
        args = gf_model.ModelArgs.from_name(CONFIG_NAME)
        if all(getattr(args, k, None) == v for k, v in wanted.items()) and args.head_dim == 128:
            return args, f"transformer_configs['{CONFIG_NAME}']"
    return gf_model.ModelArgs(**wanted), "explicit"


def build_random(gf_model: types.ModuleType, args: Any, device: str, dtype: Any, seed: int) -> Any:
    """gpt-fast's Transformer with random weights, allocated on `device` only."""
    import torch

    with torch.device("meta"):
        model = gf_model.Transformer(args)
    model = model.to(dtype=dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, gf_model.RMSNorm) and name == "weight":
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, WEIGHT_STD, generator=generator)
    return model.eval()


def quantize_like_gpt_fast(model: Any, mode: str, device: str) -> Any:
    """gpt-fast's own weight-only quantization (its quantize.py handlers): int8 per channel, or int4 in groups
    of 128 through torch's tinygemm kernel, done the way its quantize.py main() and generate.py load them."""
    quantize = importlib.import_module("quantize")
    if mode == "int8":
        handler = quantize.WeightOnlyInt8QuantHandler(model)
        state = handler.create_quantized_state_dict()
    else:
        import torch

        original = torch.ops.aten._convert_weight_to_int4pack
        _accept_int32_int4pack()
        try:
            handler = quantize.WeightOnlyInt4QuantHandler(model, groupsize=128)
            state = handler.create_quantized_state_dict(use_cuda=device.startswith("cuda"))
        finally:  # torch.compile must see the real op namespace again
            torch.ops.aten._convert_weight_to_int4pack = original
    model = handler.convert_for_runtime()
    model.load_state_dict(state, assign=True)
    return model.to(device=device).eval()


def _accept_int32_int4pack() -> None:
    """gpt-fast hands torch's tinygemm packer int32 values [N, K]; since torch 2.5 the CUDA op takes the
    nibbles pre-packed as uint8 [N, K / 2] (high nibble first) and refuses int32. Wrap the op so gpt-fast's
    own handler runs unchanged: the kernel, the layout and the numbers are gpt-fast's."""
    import torch

    op = torch.ops.aten._convert_weight_to_int4pack

    def convert(weight: Any, inner_k_tiles: int) -> Any:
        if weight.dtype == torch.int32:
            weight = (weight[:, 0::2] << 4 | weight[:, 1::2]).to(torch.uint8)
        return op(weight, inner_k_tiles)

    torch.ops.aten._convert_weight_to_int4pack = convert  # type: ignore[assignment]


def decode_step_bytes(args: Any, prompt_tokens: int, new_tokens: int, element: int = 2) -> int:
    """Bytes a decode step must read (the same rule as llamarun.bench.bandwidth): every weight but the
    embedding table, plus K and V of the average context, prompt + new/2 tokens."""
    head_dim = args.dim // args.n_head
    kv = args.n_local_heads * head_dim
    per_layer = args.dim * (args.dim + 2 * kv) + args.dim * args.dim + 3 * args.dim * args.intermediate_size
    per_layer += 2 * args.dim  # the two norms
    weights = args.n_layer * per_layer + args.dim + args.vocab_size * args.dim  # + final norm + head
    kv_per_token = 2 * args.n_layer * kv
    return int((weights + (prompt_tokens + new_tokens / 2) * kv_per_token) * element)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    import torch

    t_start = time.perf_counter()
    gf_model, gf_gen = import_gpt_fast(Path(opts.gpt_fast))
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    folder = Path(opts.gpt_fast)
    commit = (folder / "COMMIT").read_text().strip() if (folder / "COMMIT").is_file() else None
    args, source = model_args(gf_model, opts.tiny)
    out: dict[str, Any] = {
        "engine": "gpt-fast", "gpt_fast_commit": commit, "shape": "tiny" if opts.tiny else "llama3.1-8b",
        "config_source": source, "device": device, "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__, "dtype": "bfloat16", "batch_size": 1, "prompt_tokens": opts.prompt_tokens,
        "new_tokens": opts.new_tokens, "temperature": opts.temperature, "top_k": opts.top_k,
        "compile": not opts.no_compile, "compile_mode": None if opts.no_compile else "reduce-overhead",
    }
    t = time.perf_counter()
    model = build_random(gf_model, args, device, torch.bfloat16, opts.seed)
    if opts.quantize:
        model = quantize_like_gpt_fast(model, opts.quantize, device)
        out["quantize"] = opts.quantize
    sync()
    out["build_s"] = round(time.perf_counter() - t, 3)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    model_bytes, _ = gf_gen._get_model_size(model)  # gpt-fast's own count: every weight but the embedding
    out["model_bytes"] = model_bytes
    out["decode_step_bytes"] = decode_step_bytes(args, opts.prompt_tokens, opts.new_tokens)
    save(opts, out)

    # Random ids below 1024, as gpt-fast's main() makes a synthetic prompt (the tiny vocabulary is smaller).
    prompt = torch.randint(0, min(1024, args.vocab_size), (opts.prompt_tokens,), device=device, dtype=torch.int64)
    torch.manual_seed(opts.seed)
    if not opts.no_compile:
        gf_gen.decode_one_token = torch.compile(gf_gen.decode_one_token, mode="reduce-overhead", fullgraph=True)

    def generate() -> float:
        sync()
        t0 = time.perf_counter()
        y, _ = gf_gen.generate(model, prompt, opts.new_tokens, batch_size=1, interactive=False, draft_model=None,
                               temperature=opts.temperature, top_k=opts.top_k)
        sync()
        assert y.size(-1) - opts.prompt_tokens == opts.new_tokens
        return time.perf_counter() - t0

    # The first generation pays the compile of decode_one_token (or, eager, first-call set-up): not timed.
    first = round(generate(), 2)
    out["compile_s" if not opts.no_compile else "warmup_s"] = first
    print(f"first generation ({'compile' if not opts.no_compile else 'warm-up'}): {first:.1f} s", flush=True)
    save(opts, out)
    samples = []
    for i in range(opts.samples):
        seconds = generate()
        samples.append(opts.new_tokens / seconds)
        print(f"generation {i + 1}: {seconds:.2f} s, {samples[-1]:.2f} tokens/s", flush=True)
        out["samples_tokens_per_s"] = [round(x, 2) for x in samples]
        out["tokens_per_s"] = round(statistics.median(samples), 2)
        save(opts, out)

    # Prefill alone (gpt-fast's uncompiled prefill, as generate() runs it) gives the decode-only rate.
    positions = torch.arange(0, opts.prompt_tokens, device=device)
    prefills = []
    with torch.no_grad():
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            gf_gen.prefill(model, prompt.view(1, -1), positions, temperature=opts.temperature, top_k=opts.top_k)
            sync()
            prefills.append(time.perf_counter() - t0)
    prefill_s = statistics.median(prefills)
    generation_s = opts.new_tokens / out["tokens_per_s"]
    out["prefill_s"] = round(prefill_s, 4)
    out["prompt_tokens_per_s"] = round(opts.prompt_tokens / prefill_s, 1)
    if generation_s > prefill_s:
        out["decode_tokens_per_s"] = round((opts.new_tokens - 1) / (generation_s - prefill_s), 2)
    out["bandwidth_gb_s_gpt_fast"] = round(model_bytes * out["tokens_per_s"] / 1e9, 1)  # as generate.py prints
    if opts.copy_bandwidth and "decode_tokens_per_s" in out and not opts.quantize:  # bytes counted for bf16
        out["copy_gb_s"] = opts.copy_bandwidth
        fraction = out["decode_step_bytes"] * out["decode_tokens_per_s"] / (opts.copy_bandwidth * 1e9)
        out["decode_bw_fraction"] = float(f"{fraction:.4g}")
    if cuda:
        out["memory_gb"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 2)
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    out["complete"] = True
    save(opts, out)
    return out


def save(opts: argparse.Namespace, out: dict[str, Any]) -> None:
    if opts.json:
        path = Path(opts.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpt-fast", required=True, metavar="DIR", help="folder holding gpt-fast's model.py, generate.py")
    ap.add_argument("--device", help="cuda (default when available) or cpu")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy shape instead of Llama 3.1 8B")
    ap.add_argument("--no-compile", action="store_true", help="run eagerly (no torch.compile)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--samples", type=int, default=3, help="timed generations after the warm-up")
    ap.add_argument("--temperature", type=float, default=0.8, help="gpt-fast's default")
    ap.add_argument("--top-k", type=int, default=200, help="gpt-fast's default")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--quantize", choices=("int8", "int4"), help="gpt-fast's weight-only int8 or int4 (group 128)")
    ap.add_argument("--copy-bandwidth", type=float, metavar="GB/S", help="to rate decode against (read + write)")
    ap.add_argument("--json", metavar="PATH", help="also write the result here")
    opts = ap.parse_args(argv)
    folder = Path(opts.gpt_fast)
    if not (folder / "model.py").is_file() or not (folder / "generate.py").is_file():
        ap.error(f"{folder} holds no gpt-fast checkout (model.py, generate.py)")
    for name in ("prompt_tokens", "new_tokens", "samples"):
        if getattr(opts, name) < 1 or (name == "new_tokens" and opts.new_tokens < 2):
            ap.error(f"--{name.replace('_', '-')} is too small")
    print(json.dumps(run(opts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
