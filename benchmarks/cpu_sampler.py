"""The sampler's cost a token on CPUs at the default model's vocabulary (49,152), with Ollama's default parameters.

    PYTHONPATH=. python benchmarks/cpu_sampler.py [--vocab 49152] [--threads 2]

Times one row through `Sampler.sample` for greedy decoding, for the default parameters unseeded (noise drawn for
the top-k candidates only) and for the same parameters with a seed (a full-vocabulary noise draw from the
request's generator: what every unseeded row paid before). Writes benchmarks/results/cpu-sampler-DATE.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import torch

from llamarun.sampling.params import SamplingParams
from llamarun.sampling.sampler import Sampler, SamplerState

RESULTS = Path(__file__).parent / "results"


def per_token_ms(params: SamplingParams, vocab: int, steps: int = 200) -> float:
    sampler, state = Sampler(), SamplerState(params, list(range(100, 300)))
    logits = torch.randn(1, vocab)
    for _ in range(10):
        sampler.sample(logits, [state])
    t = time.perf_counter()
    for _ in range(steps):
        sampler.sample(logits, [state])
    return (time.perf_counter() - t) / steps * 1e3


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [("greedy", SamplingParams.greedy()), ("default, unseeded (candidates' noise)", SamplingParams()),
            ("default, seeded (full-vocabulary noise)", SamplingParams(seed=1))]
    lines = [f"# Sampler cost a token on CPU, {dt.date.today()}", "",
             f"CPU: {cpu_name()}, {args.threads} threads; vocabulary {args.vocab}; torch {torch.__version__}.",
             "One row through `Sampler.sample`, median of 3 runs of 200 tokens each, all in one process.", "",
             "| parameters | ms a token |", "|---|---|"]
    for name, params in rows:
        ms = sorted(per_token_ms(params, args.vocab) for _ in range(3))[1]
        lines.append(f"| {name} | {ms:.2f} |")
        print(name, round(ms, 3))
    path = RESULTS / f"cpu-sampler-{dt.date.today()}.md"
    path.write_text("\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
