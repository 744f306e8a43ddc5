"""The kernels of one batch-1 decode step on a GPU, by name: where a step's time goes, GEMVs and the rest.

    python3 benchmarks/gpu_step_kernels.py [--shape llama3.3-70b] [--weights fp8] [--context 256]

Builds the shape with random weights (quantized as `--weights` says), fills a context of `--context` tokens,
then profiles replays of the captured batch-1 decode graph (torch.profiler, CUDA activity) and prints each
kernel's GPU time per step, its launches per step, and the sum against the replay's wall time (the rest is
the gaps between kernels). Writes $OUT/step_kernels-<shape>-<weights>.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict

import torch

from llamarun.bench.random_weights import load_random_model
from llamarun.sampling.params import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3.3-70b")
    ap.add_argument("--weights", default="fp8")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--engine-steps", type=int, default=0, help="also profile this many whole engine steps")
    args = ap.parse_args()
    context = args.context + 64 + 3 * args.engine_steps + 16
    rm = load_random_model(args.shape, device="cuda", concurrency=1, context_length=context, seed=0,
                           dtype=torch.bfloat16, available_bytes=None, weights=args.weights)
    engine, runner = rm.engine, rm.engine.runner
    engine.add_request(list(range(1000, 1000 + args.context)), SamplingParams.greedy(max_tokens=8), request_id="r")
    while engine.has_unfinished:
        engine.step()
    graph, _ = runner.graphs[min(runner.graphs)]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    walls = []
    for _ in range(args.replays):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        walls.append(start.elapsed_time(end) * 1e3)
    rows = _profile(graph.replay, args.replays)
    kernel_us = sum(us for _, us, _ in rows)
    replay_us = statistics.median(walls)
    print(f"{args.shape} {args.weights}: replay {replay_us:.0f} us, kernels {kernel_us:.0f} us, "
          f"gaps {replay_us - kernel_us:.0f} us, {sum(n for _, _, n in rows):.0f} launches a step")
    for name, us, n in rows[:25]:
        print(f"  {us:9.1f} us {n:5.0f}x  {name}")
    if args.engine_steps:  # whole engine steps of a steady decode: what runs beside the graph, and the wall
        n = args.engine_steps
        engine.add_request(list(range(1000, 1000 + args.context)), SamplingParams.greedy(max_tokens=3 * n + 16),
                           request_id="e")
        for _ in range(8):
            engine.step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / n * 1e6
        steps = _profile(engine.step, n)
        print(f"engine steps: wall {wall:.0f} us a step against the replay's {replay_us:.0f}, GPU work "
              f"{sum(us for _, us, _ in steps):.0f} us; the kernels and copies launched fewer than 8 times a step:")
        for name, us, c in steps:
            if c < 8:
                print(f"  {us:9.1f} us {c:5.1f}x  {name}")
    if os.environ.get("OUT"):
        path = os.path.join(os.environ["OUT"], f"step_kernels-{args.shape}-{args.weights}.json")
        with open(path, "w") as f:
            json.dump({"shape": args.shape, "weights": args.weights, "context": args.context, "replay_us": replay_us,
                       "kernel_us": kernel_us, "kernels": [{"name": n, "us": us, "per_step": c} for n, us, c in rows],
                       "card": torch.cuda.get_device_name()}, f, indent=1)


def _profile(fn, n: int) -> list[tuple[str, float, float]]:
    """(kernel or copy name, GPU us a call, launches a call) over n calls of fn, most time first."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals[event.name[:90]]
            entry[0] += event.device_time_total
            entry[1] += 1
    return sorted(((name, us / n, c / n) for name, (us, c) in totals.items()), key=lambda row: -row[1])


if __name__ == "__main__":
    main()
