"""Where a tensor-parallel decode step's time goes on rank 0: the step broadcast, the runner, the rest.

Builds a random-weight model over --tp ranks (one GPU each), runs one request (--prompt-tokens, then
--output-tokens greedy), and times every engine step, the gloo broadcast of the plain-data step inside
it, and the runner's own run (graph replay, sampling, the token's copy to the host). The remainder is the
scheduler and the engine's bookkeeping. Run it once per all-reduce path (LLAMARUN_ALLREDUCE=nccl|auto).

    LLAMARUN_ALLREDUCE=auto python3 benchmarks/gpu_tp_step_profile.py --shape llama3.3-70b --tp 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama3.3-70b")
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--weights", default="exact")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json")
    args = p.parse_args()
    os.environ["LLAMARUN_TP"] = str(args.tp)
    import torch

    from llamarun.bench.random_weights import load_random_model
    from llamarun.sampling.params import SamplingParams

    rm = load_random_model(args.shape, device=args.device, concurrency=1,
                           context_length=args.prompt_tokens + args.output_tokens + 16, weights=args.weights)
    runner = rm.engine.runner
    spans: dict[str, list[float]] = {"broadcast": [], "run": [], "step": []}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            spans[name].append(time.perf_counter() - t0)
            return out
        return wrapper

    if args.tp > 1:
        runner.group.broadcast_object = timed("broadcast", runner.group.broadcast_object)
        runner.inner.run = timed("run", runner.inner.run)
    else:
        runner.run = timed("run", runner.run)
    gen = torch.Generator().manual_seed(0)
    for round_ in range(2):  # the first is a warm-up
        for v in spans.values():
            v.clear()
        ids = torch.randint(1, rm.config.vocab_size - 1, (args.prompt_tokens,), generator=gen).tolist()
        rm.engine.add_request(ids, SamplingParams.greedy(max_tokens=args.output_tokens), request_id=f"r{round_}")
        while rm.engine.has_unfinished:
            t0 = time.perf_counter()
            rm.engine.step()
            spans["step"].append(time.perf_counter() - t0)
    decode = {k: v[2:] for k, v in spans.items() if v}  # decode steps only (the first is the prompt)
    med = {k: statistics.median(v) * 1e3 for k, v in decode.items()}
    med["other"] = med["step"] - med["run"] - med.get("broadcast", 0.0)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    record = {"benchmark": "gpu_tp_step_profile", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "gpus": f"{args.tp} x {card}", "shape": args.shape, "weights": args.weights,
              "allreduce": os.environ.get("LLAMARUN_ALLREDUCE", "auto"),
              "one_shot": getattr(getattr(runner, "group", None), "one_shot", None) is not None,
              "median_ms": med, "decode_tok_s": 1e3 / med["step"], "steps": len(decode["step"])}
    print(json.dumps(record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    rm.close()


if __name__ == "__main__":
    main()
