"""Batch-1 decode attention at Llama 3.3 70B's heads (64 query, 8 KV, 128 wide) by split count and tile size.

The split count is fixed by the block table's capacity (CUDA-graph safety, kernels/decode_attention.py); at a
short context one sequence's 8 KV heads give few programs, so this measures what more, shorter splits buy.
Graph-replayed over 80 layers' caches (a step's worth, so the L2 does not serve them).

    PYTHONPATH=. python benchmarks/gpu_decode_splits.py [--contexts 256,512,1024,4096]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_kernels as gk

from llamarun.kernels import decode_attention as dec


def measure(context: int, rows: list) -> None:
    layers = 80
    cache, tables, _ = gk.make_cache([context], layers)
    lens = torch.full((1,), context, dtype=torch.int32, device="cuda")
    q = torch.randn(1, 64, 128, device="cuda", dtype=torch.bfloat16)
    want = dec.decode_attention_reference(q, cache.k[0], cache.v[0], tables, lens, gk.SCALE, gk.PAGE)
    auto = dec.default_num_splits(1, 8, tables.shape[1] * gk.PAGE, dec.sm_count(q.device))
    for block_n in (64, 32, 16):
        dec.BLOCK_N = block_n
        for splits in (1, 2, 4, 8, 16, 32):
            if splits * block_n > 2 * context:
                continue
            def call(i: int, s: int = splits) -> torch.Tensor:
                return dec.decode_attention(q, cache.k[i], cache.v[i], tables, lens, gk.SCALE, gk.PAGE,
                                            num_splits=s)

            err = (call(0).float() - want.float()).abs().max().item()
            ms = gk.graph_ms(call, layers)
            rows.append({"context": context, "block_n": block_n, "splits": splits, "us": ms * 1e3, "err": err,
                         "auto_splits": auto})
            mark = " (auto)" if splits == auto and block_n == 64 else ""
            print(f"context {context:5d} block_n {block_n:3d} splits {splits:2d} {ms * 1e3:6.2f} us  err {err:.3g}"
                  f"{mark}", flush=True)
    dec.BLOCK_N = 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="256,512,1024,4096")
    args = ap.parse_args()
    gk.HEADS, gk.KV_HEADS, gk.HIDDEN, gk.INTER = 64, 8, 8192, 28672
    rows = []
    for context in (int(c) for c in args.contexts.split(",")):
        measure(context, rows)
        torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "decode_splits.json"), "w") as f:
            json.dump({"card": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
