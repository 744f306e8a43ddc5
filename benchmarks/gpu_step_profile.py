"""Where a batch-1 step's time goes on a GPU: whole engine steps against the GPU time inside them.

    python3 benchmarks/gpu_step_profile.py [--shape llama3.1-8b] [--weights fp8] [--prompt-tokens 128]

Prints, for a decode step and for a prompt step: wall time of `engine.step()`, and the GPU time of the
forward pass alone (a graph replay, or the eager forward, timed with CUDA events). The difference is host
work the GPU waits for: scheduling, packing, input copies, sampling, the sync.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time

import torch

from llamarun.bench.random_weights import load_random_model
from llamarun.sampling.params import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3.1-8b")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--weights", default="exact", help="exact, or a quantization format: fp8, int4-g128, ...")
    args = ap.parse_args()
    rm = load_random_model(args.shape, device="cuda", concurrency=1, context_length=1024, seed=0,
                           dtype=torch.bfloat16, available_bytes=None, weights=args.weights)
    engine, runner = rm.engine, rm.engine.runner
    prompt = list(range(1000, 1000 + args.prompt_tokens))
    prompt_walls = []
    for i in range(4):  # prompt steps: the first compiles nothing new (capture warmed up the kernels) but check
        engine.add_request([p + i for p in prompt], SamplingParams.greedy(max_tokens=args.steps), request_id=f"r{i}")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.step()
        prompt_walls.append(time.perf_counter() - t0)
        walls = []
        while engine.has_unfinished:
            t0 = time.perf_counter()
            engine.step()
            walls.append(time.perf_counter() - t0)
    size = min(runner.graphs)
    graph, _ = runner.graphs[size]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    replays = []
    for _ in range(50):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        replays.append(start.elapsed_time(end) / 1e3)
    out = {"shape": args.shape, "weights": args.weights, "prompt_tokens": args.prompt_tokens,
           "prompt_step_ms": [round(w * 1e3, 2) for w in prompt_walls],
           "decode_step_ms_median": round(statistics.median(walls) * 1e3, 3),
           "graph_replay_ms_median": round(statistics.median(replays) * 1e3, 3),
           "steps": dict(runner.steps)}
    out["host_overhead_ms"] = round(out["decode_step_ms_median"] - out["graph_replay_ms_median"], 3)
    print(json.dumps(out))
    # Host functions of 64 decode steps, by own time: what the GPU waits for between graph replays.
    engine.add_request(prompt, SamplingParams.greedy(max_tokens=64), request_id="profiled")
    engine.step()
    profiler = cProfile.Profile()
    profiler.enable()
    while engine.has_unfinished:
        engine.step()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
