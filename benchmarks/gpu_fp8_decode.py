"""FP8 (e4m3, per-channel scales) batch-1 decode kernels at Llama 3.1 8B and 3.3 70B shapes, side by side.

- `fp8.words`: `kernels/fp8_gemv.py` (weights read as words of four, one FMA chain per word), its launch swept
  first over the wide (more than NARROW output rows) and narrow shapes;
- `fp8.words_nopdl`: the same launched without programmatic dependent launch;
- `fp8.tile`: `kernels/gemv.py`'s float tile (the kernel before it);
- `bf16.cublas`: the bf16 weight through `F.linear`, for scale.

Times are CUDA-graph replays over enough weight copies that the L2 never serves them (gpu_quant_kernels.py);
each cell gives microseconds and the weight bytes read per second as a fraction of the card's copy bandwidth
measured in the same call.

    PYTHONPATH=. python benchmarks/gpu_fp8_decode.py [--budget SECONDS] [--shapes 70b.o,8b.down] [--no-sweep]

Writes $OUT/fp8_decode.json when OUT is set.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_int4_decode import start_record, sweep
from gpu_quant_kernels import SHAPES, TP2_SHAPES, copies, make_fp8, time_row

from llamarun.kernels import fp8_gemv
from llamarun.kernels.gemv import gemv_scaled

ALL_SHAPES = {**SHAPES, **TP2_SHAPES}
GRID = [(bn, bk, w) for bn in (4, 8, 16) for bk in (1024, 2048, 4096) for w in (4, 8)
        if 4096 <= bn * bk <= 32768]


def calls_for(kernel: str, n: int, k: int, x: torch.Tensor) -> tuple[list, int]:
    if kernel == "bf16.cublas":
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies(2 * n * k))]
        return [lambda w=w: F.linear(x, w) for w in ws], 2 * n * k
    ws = [make_fp8(n, k) for _ in range(copies(n * k))]
    if kernel == "fp8.tile":
        return [lambda w=w: gemv_scaled(x, w.weight, w.scale) for w in ws], n * k
    if kernel in ("fp8.words", "fp8.words_nopdl"):
        return [lambda w=w: fp8_gemv.gemv_fp8(x, w.weight, w.scale) for w in ws], n * k
    raise ValueError(kernel)


def check() -> list[str]:
    """The words GEMV against the reference product, bf16 and fp16, with and without SiLU, odd N."""
    from llamarun.kernels.activation import silu_and_mul_reference

    bad = []
    for dtype in (torch.bfloat16, torch.float16):
        for silu in (False, True):
            for n, k in ((1000, 2048), (37, 8192 + 1024)):
                w = make_fp8(n, k)
                x = torch.randn(1, 2 * k if silu else k, device="cuda", dtype=dtype)
                got = fp8_gemv.gemv_fp8(x, w.weight, w.scale, silu_input=silu, out=torch.empty(1, n, device="cuda"))
                want = (silu_and_mul_reference(x) if silu else x).float() @ (w.weight.float() * w.scale[:, None]).t()
                err = ((got - want).abs().max() / want.abs().max()).item()
                if err > 1e-5:
                    bad.append(f"{dtype} silu={silu} {n}x{k}: relative error {err:.3g}")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--shapes", default=",".join(ALL_SHAPES))
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    results, copy = start_record(check)
    if not args.no_sweep:
        SHAPES.update(TP2_SHAPES)  # the shared sweep looks shapes up there
        wide = [s for s in ALL_SHAPES if ALL_SHAPES[s][0] > fp8_gemv.NARROW]
        narrow = [s for s in ALL_SHAPES if ALL_SHAPES[s][0] <= fp8_gemv.NARROW]
        sweep(results, t0 + args.budget * 0.3, "fp8w_wide", "fp8.words", fp8_gemv.CONFIG, "fp8w", GRID, 1, wide,
              calls_for)
        sweep(results, t0 + args.budget * 0.6, "fp8w_narrow", "fp8.words", fp8_gemv.CONFIG, "fp8w_narrow", GRID, 1,
              narrow, calls_for)
    results["words_config"] = dict(fp8_gemv.CONFIG)
    for shape in args.shapes.split(","):
        if time.time() - t0 > args.budget:
            results["stopped_early"] = f"budget reached at {shape}"
            break
        n, k = ALL_SHAPES[shape]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        for kernel in ("bf16.cublas", "fp8.tile", "fp8.words", "fp8.words_nopdl"):
            fp8_gemv.USE_PDL = kernel != "fp8.words_nopdl"
            time_row(results, copy, shape, 1, kernel, functools.partial(calls_for, kernel, n, k, x))
            fp8_gemv.USE_PDL = True
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "fp8_decode.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
