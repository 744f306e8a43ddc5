"""What a grammar adds to time per output token at batch 32, measured in one run with and without it.

    python benchmarks/grammar_overhead.py [--model smollm2:135m] [--device cpu|cuda] [--batch 32] [--tokens 64]

32 requests run together on the engine, once without a grammar and once each under a JSON schema (eight
string fields of at least 20 characters, so no request can finish early), alternating for `--rounds` rounds so
machine noise hits both alike. Time per output token is the median, over decode steps where all rows sample,
of step time / rows. The grammar's compile is paid before the timed steps (it is cached per schema). The time
spent inside the grammar mask (fill, copy, apply) is also timed on its own, which a busy machine disturbs less
than the whole-step difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SCHEMA = {"type": "object", "properties": {f"field_{i}": {"type": "string", "minLength": 20, "maxLength": 40}
                                           for i in range(8)},
          "required": [f"field_{i}" for i in range(8)], "additionalProperties": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2:135m",
                        help="a store name or path (on the device: a folder from benchmarks/device_model.py)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args()
    try:
        import xgrammar  # noqa: F401
    except ImportError as err:
        print(f"grammar_overhead: the grammar engine (xgrammar) cannot be imported here ({err}); "
              "install it with `pip install xgrammar` and run again", file=sys.stderr)
        return 2

    import torch

    from llamarun.chat.messages import Message
    from llamarun.llm.loading import load_model
    from llamarun.sampling.grammar_spec import GrammarSpec
    from llamarun.sampling.params import SamplingParams
    from llamarun.structured.engine import compile_grammar

    lm = load_model(args.model, device=args.device, context_length=1024, kv_tokens=args.batch * 1024)
    engine = lm.engine
    prompts = [lm.template.encode([Message("user", f"Describe person number {i} in JSON.")], lm.tokenizer)
               for i in range(args.batch)]
    spec = GrammarSpec("json_schema", SCHEMA)
    t0 = time.perf_counter()
    compile_grammar(engine.grammar_vocab, spec)
    compile_s = time.perf_counter() - t0
    results: dict[str, list[float]] = {"plain": [], "grammar": []}
    masker = engine.runner.sampler.masker
    mask_times: list[float] = []
    apply = masker.apply

    def timed_apply(*a, **kw):
        t = time.perf_counter()
        out = apply(*a, **kw)
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        mask_times.append(time.perf_counter() - t)
        return out

    for _ in range(args.rounds):
        for name in ("plain", "grammar"):
            params = SamplingParams.greedy(max_tokens=args.tokens, grammar=spec if name == "grammar" else None)
            results[name].extend(_decode_step_times(engine, prompts, params, lm.stop_ids, args.batch))
    # The mask's own time in one more round: timing it waits for the GPU, which would spoil the overlap of the
    # host's mask fill with the forward pass in the rounds above.
    masker.apply = timed_apply
    _decode_step_times(engine, prompts, SamplingParams.greedy(max_tokens=args.tokens, grammar=spec),
                       lm.stop_ids, args.batch)
    plain, grammar = statistics.median(results["plain"]), statistics.median(results["grammar"])
    overhead = grammar / plain - 1
    mask_ms = statistics.median(mask_times) * 1e3
    print(f"{args.model} on {lm.device}, batch {args.batch}, {args.tokens} tokens per request, {args.rounds} rounds")
    print(f"schema compile (once): {compile_s * 1e3:.1f} ms")
    print(f"time per output token: without grammar {plain * 1e3:.3f} ms, with grammar {grammar * 1e3:.3f} ms "
          f"({overhead * 100:+.1f}%), over {len(results['plain'])} / {len(results['grammar'])} full decode steps")
    print(f"grammar mask per step (fill {args.batch} rows, copy, apply): median {mask_ms:.2f} ms = "
          f"{mask_ms / (grammar * 1e3 * args.batch) * 100:.1f}% of a grammar step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "device": str(lm.device), "batch": args.batch, "tokens": args.tokens,
                       "compile_ms": compile_s * 1e3, "ms_per_token_plain": plain * 1e3,
                       "ms_per_token_grammar": grammar * 1e3, "overhead": overhead,
                       "mask_ms_per_step": mask_ms}, f, indent=2)
    return 0


def _decode_step_times(engine, prompts, params, stop_ids, batch: int) -> list[float]:
    """Seconds per output token of each step in which all `batch` requests decoded one token."""
    for i, ids in enumerate(prompts):
        engine.add_request(ids, params, stop_ids, request_id=f"r{i}")
    per_token = []
    while engine.has_unfinished:
        t0 = time.perf_counter()
        outputs = engine.step()
        elapsed = time.perf_counter() - t0
        sampled = sum(len(o.new_tokens) for o in outputs)
        if sampled == batch and engine.scheduler.num_preemptions == 0:
            per_token.append(elapsed / batch)
    return per_token[1:]  # the first full step still holds prompt work


if __name__ == "__main__":
    sys.exit(main())
