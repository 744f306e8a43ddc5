"""Tuning variants of the attention kernels on the GPU: tile sizes, warps, pipeline stages, decode splits.

Times each variant with gpu_kernels.py's graphed do_bench at Llama 3.1 8B shapes and prints a table
(results only: defaults stay in llamarun/kernels/*). Writes $OUT/kernel_sweep.json when OUT is set.

    python benchmarks/gpu_kernels_sweep.py [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import gpu_kernels as gk
import torch

SWEEP_DECODE = [(1, 32768), (64, 1024), (1, 4096), (16, 4096)]  # (batch, context)
SWEEP_PREFILL = [(4, 2048, 0), (4, 2048, 2048), (1, 512, 0)]  # (sequences, chunk, cached prefix)


def _sweep_decode_case(dec, batch: int, context: int) -> None:
    kv_bytes = batch * context * gk.KV_HEADS * gk.HEAD_DIM * 4
    layers = gk.layers_for(kv_bytes)
    cache, tables, _ = gk.make_cache([context] * batch, layers)
    lens = torch.full((batch,), context, dtype=torch.int32, device=gk.DEVICE)
    q = torch.randn(batch, gk.HEADS, gk.HEAD_DIM, device=gk.DEVICE, dtype=gk.DTYPE)
    expected = dec.decode_attention_reference(q, cache.k[0], cache.v[0], tables, lens, gk.SCALE, gk.PAGE)

    def run(splits: int | None) -> Callable[[int], torch.Tensor]:
        return lambda i: dec.decode_attention(q, cache.k[i], cache.v[i], tables, lens, gk.SCALE, gk.PAGE,
                                              num_splits=splits)

    for block_n, warps, stages in [(64, 4, 3), (32, 4, 3), (128, 4, 3), (64, 8, 3), (64, 4, 2), (64, 4, 5)]:
        for splits in [None, 2] if batch > 1 else [None, 16, 64]:
            dec.BLOCK_N, dec.NUM_WARPS, dec.NUM_STAGES = block_n, warps, stages
            label = f"bn{block_n} w{warps} s{stages} splits {splits or 'auto'}"
            gk.try_impl("sweep decode", f"{batch}x{context}", label, lambda s=splits: run(s), expected,
                        lambda ms: {"GB/s": round(kv_bytes / ms / 1e6, 1)}, layers)


def _sweep_prefill_case(pre, num_seqs: int, chunk: int, prefix: int) -> None:
    length = prefix + chunk
    cache, tables, _ = gk.make_cache([length] * num_seqs, seed=1)
    lens = torch.full((num_seqs,), length, dtype=torch.int32, device=gk.DEVICE)
    starts = torch.arange(num_seqs + 1, dtype=torch.int32, device=gk.DEVICE) * chunk
    q = torch.randn(num_seqs * chunk, gk.HEADS, gk.HEAD_DIM, device=gk.DEVICE, dtype=gk.DTYPE)
    flops = 4 * num_seqs * sum(prefix + i + 1 for i in range(chunk)) * gk.HEADS * gk.HEAD_DIM
    expected = pre.prefill_attention_reference(q, cache.k[0], cache.v[0], tables, lens, starts, gk.SCALE, gk.PAGE)

    def run(block_m: int) -> Callable[[int], torch.Tensor]:
        return lambda i: pre.prefill_attention(q, cache.k[0], cache.v[0], tables, lens, starts, gk.SCALE, gk.PAGE,
                                               chunk, block_m=block_m)

    for block_m, block_n, warps, stages in [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3),
                                            (64, 64, 4, 4), (64, 128, 4, 2), (128, 32, 4, 3), (256, 64, 8, 2)]:
        pre.BLOCK_N, pre.NUM_WARPS, pre.NUM_STAGES = block_n, warps, stages
        label = f"bm{block_m} bn{block_n} w{warps} s{stages}"
        gk.try_impl("sweep prefill", f"{num_seqs}x{chunk}+{prefix}", label, lambda bm=block_m: run(bm), expected,
                    lambda ms: {"TFLOP/s": round(flops / ms / 1e9, 1)})


def sweep() -> None:
    """Tile/warp/stage/split variants of the attention kernels (results only; defaults stay in the modules)."""
    import llamarun.kernels.decode_attention as dec
    import llamarun.kernels.prefill_attention as pre

    defaults = (dec.BLOCK_N, dec.NUM_WARPS, dec.NUM_STAGES)
    for batch, context in SWEEP_DECODE:
        _sweep_decode_case(dec, batch, context)
    dec.BLOCK_N, dec.NUM_WARPS, dec.NUM_STAGES = defaults
    defaults = (pre.BLOCK_N, pre.NUM_WARPS, pre.NUM_STAGES)
    for case in SWEEP_PREFILL:
        _sweep_prefill_case(pre, *case)
    pre.BLOCK_N, pre.NUM_WARPS, pre.NUM_STAGES = defaults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="check this script on the CPU at tiny shapes")
    if parser.parse_args().smoke:
        global SWEEP_DECODE, SWEEP_PREFILL
        gk._smoke_settings()
        SWEEP_DECODE, SWEEP_PREFILL = [(1, 70)], [(1, 24, 8)]
    elif not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    start = time.perf_counter()
    sweep()
    return gk.finish(start, "kernel_sweep.json")


if __name__ == "__main__":
    sys.exit(main())
