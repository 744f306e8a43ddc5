"""Microbenchmark of the native W4A8 decode GEMV (kernels/cpu/gemv_w4a8.c) against PyTorch's int4 CPU kernel
(`_weight_int4pack_mm_for_cpu`, bfloat16 activations, as `Int4Linear` ran decode before) on the default model's
linear shapes, for 1 and 4 rows. Each timing is the median of alternating batches of calls, so drift in the
machine's speed falls on both kernels alike. Effective bandwidth counts the bytes the native kernel reads.

With `--cold`, each call takes the next of enough copies of the weight to exceed the last-level cache
(`--cache-mb`), as a decode step reads each layer's weights once from memory; otherwise the weight stays
cached between calls, which measures the arithmetic.

    python benchmarks/cpu_w4a8_kernel.py [--group 32] [--rows 1 4] [--cold]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from llamarun.kernels.cpu import build
from llamarun.quant.int4 import PROMPT_GEMM_ENV, Int4Linear
from llamarun.quant.layouts import Int4Weight, pack_nibbles

# (N, K): o_proj, merged q/k/v, k or v alone, merged gate/up, up alone, down
SHAPES = [(576, 576), (960, 576), (192, 576), (3072, 576), (1536, 576), (576, 1536)]


def _time(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--group", type=int, default=32)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--cold", action="store_true", help="weights from memory, not from the cache")
    ap.add_argument("--cache-mb", type=int, default=32)
    args = ap.parse_args()
    os.environ[PROMPT_GEMM_ENV] = "off"  # the layers keep PyTorch's packing beside the records, to time its kernel
    native = build.load_w4a8()
    if native is None:
        raise SystemExit("the native kernels are off or could not be built here")
    gen = torch.Generator().manual_seed(0)
    print(f"threads {torch.get_num_threads()}, group {args.group}, {'cold' if args.cold else 'cached'} weights")
    print(f"{'N x K':>12} {'rows':>4} {'torch us':>9} {'native us':>9} {'speed-up':>8} {'native GB/s':>11}")
    for n, k in SHAPES:
        g = args.group
        w = Int4Weight(pack_nibbles(torch.randint(0, 16, (n, k), generator=gen)),
                       torch.rand(n, k // g, generator=gen).half() * 0.02,
                       (torch.rand(n, k // g, generator=gen).half() - 0.5) * 0.1, g)
        layer = Int4Linear(w)
        # cold: enough copies (torch's packing and ours) to overflow the cache twice, used round robin
        copies = 1 + (2 * args.cache_mb * 2**20 // (layer.records.numel() + layer.qweight_cpu.numel()) if args.cold
                      else 0)
        torch_packs = [(layer.qweight_cpu.clone(), layer.scales_and_zeros.clone()) for _ in range(copies)]
        records = [layer.records.clone() for _ in range(copies)]
        for m in args.rows:
            x = torch.randn(m, k, generator=gen)
            xb = x.to(torch.bfloat16)
            turn = [0, 0]

            def torch_kernel(xb=xb, packs=torch_packs, g=g, turn=turn):
                qw, table = packs[turn[0] % len(packs)]
                turn[0] += 1
                torch.ops.aten._weight_int4pack_mm_for_cpu(xb, qw, g, table)

            def native_kernel(x=x, records=records, turn=turn, n=n):
                native(x, records[turn[1] % len(records)], n)
                turn[1] += 1

            calls = max(20, int(2e5 // (n * k // 1000)))
            for fn in (torch_kernel, native_kernel):
                _time(fn, calls)  # warm up
            a, b = [], []
            for _ in range(args.batches):
                a.append(_time(torch_kernel, calls))
                b.append(_time(native_kernel, calls))
            ta, tb = statistics.median(a), statistics.median(b)
            gbs = records[0].numel() / tb / 1e9
            print(f"{n:>5} x {k:<5} {m:>4} {ta * 1e6:>9.1f} {tb * 1e6:>9.1f} {ta / tb:>7.2f}x {gbs:>11.1f}")


if __name__ == "__main__":
    main()
