"""Launch configurations of the skinny INT4 kernel (5-16 decode rows, K split) on the shapes that run it.

    python3 benchmarks/gpu_skinny_sweep.py [--rows 8] [--shapes 70b.qkv,70b.o,70b.gate_up,70b.down] [--json PATH]

Each (BLOCK_N, BLOCK_K, num_warps, num_stages) is timed by CUDA-graph replays over enough weight copies to defeat
the L2 (gpu_quant_kernels.graph_ms), summed over the shapes; prints the five best, then `best BN,BK,WARPS,STAGES`
for `skinny_matmul.CONFIG["int4"]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_quant_kernels import SHAPES, graph_ms, make_kernel

from llamarun.kernels import skinny_matmul

GRID = [(bn, bk, w, st) for bn in (32, 64, 128) for bk in (64, 128) for w in (4, 8) for st in (2, 3, 4, 5)
        if not (bn == 32 and w == 8)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--shapes", default="70b.qkv,70b.o,70b.gate_up,70b.down")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    scores: dict[tuple, float] = {cfg: 0.0 for cfg in GRID}
    per_shape: dict[str, dict[str, float]] = {}
    for shape in args.shapes.split(","):
        n, k = SHAPES[shape]
        x = torch.randn(args.rows, k, device="cuda", dtype=torch.bfloat16)
        calls, _nbytes = make_kernel("int4.ours", n, k, x)
        per_shape[shape] = {}
        for cfg in list(scores):
            skinny_matmul.CONFIG["int4"] = cfg
            try:
                ms = graph_ms(calls)
            except Exception as exc:  # a configuration that does not compile or launch is dropped
                print(f"{shape} {cfg} failed: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                del scores[cfg]
                continue
            scores[cfg] += ms
            per_shape[shape][str(cfg)] = round(ms * 1e3, 2)
        del calls
        torch.cuda.empty_cache()
    ranked = sorted(scores.items(), key=lambda item: item[1])
    for cfg, total in ranked[:5]:
        detail = ", ".join(f"{s} {per_shape[s][str(cfg)]}" for s in per_shape)
        print(f"sweep rows={args.rows} {cfg}: {total * 1e3:.1f} us ({detail})", flush=True)
    print("best " + ",".join(map(str, ranked[0][0])))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "ranked": [[list(c), t * 1e3] for c, t in ranked],
                                               "per_shape": per_shape}, indent=1))


if __name__ == "__main__":
    main()
