"""INT4 (W4A16, group 128) decode kernels at Llama 3.1 8B and 3.3 70B shapes, 1 to 16 rows, side by side.

- `int4.planes`: `kernels/int4_gemv.py` (1 to 4 rows; dp4a over 16-bit fixed-point activation planes, the planes'
  own kernel included), its launch swept first;
- `int4.planes_nopdl`: the same without programmatic dependent launch (the GEMV waits for the planes kernel);
- `int4.skinny`: the float-bits tensor-core kernel (2 to 16 rows);
- `int4.tinygemm`: torch's `_weight_int4pack_mm` (gpt-fast's int4 kernel);
- `int4.gemlite`: gemlite's A16W4 (Triton; its own autotune), when the package is importable;
- `bf16.cublas`: the bf16 weight through `F.linear`, for scale.

Times are CUDA-graph replays over enough weight copies that the L2 never serves them (the GPU's own time
per matmul, see gpu_quant_kernels.py); each cell gives microseconds and the weight bytes read per second as
a fraction of the card's copy bandwidth measured in the same call.

    PYTHONPATH=. python benchmarks/gpu_int4_decode.py [--budget SECONDS] [--shapes 70b.o,8b.down]

Writes $OUT/int4_decode.json when OUT is set.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_quant_kernels import GROUP, SHAPES, copies, graph_ms, make_int4, time_row, tinygemm_pack

from llamarun.bench.bandwidth import measure_copy_bandwidth
from llamarun.kernels import int4_gemv
from llamarun.kernels.skinny_matmul import skinny_matmul
from llamarun.quant.layouts import Int4Weight, dequantize, pack_nibbles, unpack_nibbles

SWEEP_SHAPES = ["70b.qkv", "70b.o", "70b.gate_up", "70b.down", "8b.o", "8b.down"]
PLANES_GRID = [(bn, bk, w) for bn in (2, 4, 8, 16, 32) for bk in (512, 1024, 2048, 4096) for w in (2, 4, 8)
               if 2048 <= bn * bk <= 32768]


def gemlite_layer(w: Int4Weight):
    from gemlite.helper import A16Wn

    q = unpack_nibbles(w.qweight)  # [N, K] 0..15
    scales = w.scales.to(torch.bfloat16)
    zeros = (-w.mins.float() / w.scales.float()).to(torch.bfloat16)  # gemlite: w = (q - zero) * scale
    return A16Wn(device="cuda", dtype=torch.bfloat16).from_weights(q, scales, zeros, 4, w.group_size)


def calls_for(kernel: str, n: int, k: int, x: torch.Tensor) -> tuple[list, int] | None:
    rows = x.shape[0]
    if kernel == "bf16.cublas":
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies(2 * n * k))]
        return [lambda w=w: F.linear(x, w) for w in ws], 2 * n * k
    nbytes = n * k // 2 + 4 * n * (k // GROUP)
    ws = [make_int4(n, k) for _ in range(copies(nbytes))]
    if kernel == "int4.skinny":
        return [lambda w=w: skinny_matmul(x, w.qweight, w.scales, w.mins, GROUP) for w in ws], nbytes
    if kernel in ("int4.planes", "int4.planes_nopdl"):
        if rows > int4_gemv.MAX_ROWS:
            return None
        return [lambda w=w: int4_gemv.gemv_int4_planes(x, w.qweight, w.scales, w.mins, GROUP) for w in ws], nbytes
    if kernel == "int4.tinygemm":
        packed = [tinygemm_pack(w) for w in ws]
        return [lambda p=p: torch.ops.aten._weight_int4pack_mm(x, p[0], GROUP, p[1]) for p in packed], nbytes
    if kernel == "int4.gemlite":
        layers = [gemlite_layer(w) for w in ws]
        return [lambda layer=layer: layer(x) for layer in layers], nbytes
    raise ValueError(kernel)


def check() -> list[str]:
    """The planes GEMV against the reference: bf16 and fp16, groups 32 to 256, with and without SiLU."""
    from llamarun.kernels.activation import silu_and_mul_reference

    bad = []
    for dtype in (torch.bfloat16, torch.float16):
        for group in (32, 64, 128, 256):
            for silu in (False, True):
                n, k = 1000, 2048
                q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
                s = torch.rand(n, k // group, device="cuda") * 0.02 + 0.005
                m = -8 * s + torch.randn(n, k // group, device="cuda") * 0.01
                w = Int4Weight(pack_nibbles(q), s.to(dtype), m.to(dtype), group)
                x = torch.randn(1, 2 * k if silu else k, device="cuda", dtype=dtype)
                got = int4_gemv.gemv_int4_planes(x, w.qweight, w.scales, w.mins, group, silu_input=silu)
                want = (silu_and_mul_reference(x) if silu else x).float() @ dequantize(w).t()
                err = ((got.float() - want).abs().max() / want.abs().max()).item()
                if err > 1e-2:
                    bad.append(f"{dtype} group={group} silu={silu}: relative error {err:.3g}")
    return bad


def start_record(check: Callable[[], list[str]]) -> tuple[dict, float]:
    """The record's header (card, versions, date), the copy bandwidth measured now, and `check()`'s failures."""
    import triton

    results: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                     "date": time.strftime("%Y-%m-%d"), "rows": []}
    copy = measure_copy_bandwidth("cuda")
    results["copy_GBps"] = copy / 1e9
    results["check_failures"] = check()
    print("copy GB/s", round(copy / 1e9), "check failures:", results["check_failures"], flush=True)
    return results, copy


def sweep(results: dict, budget_end: float, name: str, kernel: str, table: dict, key: str, grid: list, rows: int,
          shapes: list[str], make_calls: Callable | None = None) -> None:
    """Sum each launch configuration's time over `shapes` (calls made by `make_calls`, by default this module's
    `calls_for`); leave the best in `table[key]`."""
    make_calls = make_calls or calls_for
    scores = {cfg: 0.0 for cfg in grid}
    runs = {cfg: 0 for cfg in grid}
    for shape in shapes:
        n, k = SHAPES[shape]
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        calls, _ = make_calls(kernel, n, k, x)
        for cfg in list(scores):
            if time.time() > budget_end:
                break
            table[key] = cfg
            try:
                scores[cfg] += graph_ms(calls, replays=5)
                runs[cfg] += 1
            except Exception as exc:  # a launch that does not compile is dropped
                print(f"  {name} {cfg} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                del scores[cfg]
        del calls
        torch.cuda.empty_cache()
    most = max(runs[cfg] for cfg in scores)  # a budget stop leaves some configs short of shapes: not comparable
    ranked = sorted(((cfg, t) for cfg, t in scores.items() if runs[cfg] == most), key=lambda item: item[1])
    for cfg, total in ranked[:6]:
        print(f"  sweep {name} rows={rows} {cfg}: {total * 1e3:.1f} us over {most} shapes", flush=True)
    table[key] = ranked[0][0]
    results[f"sweep_{name}"] = [{"config": cfg, "total_us": t * 1e3} for cfg, t in ranked]
    print(f"export LLAMARUN_GEMV_{key.upper()}={','.join(map(str, ranked[0][0]))}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=420.0)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--gemlite", action="store_true", help="add gemlite's A16W4 (pip install gemlite)")
    parser.add_argument("--grid", help="launch configurations to sweep instead of PLANES_GRID: 8,4096,8;8,8192,16")
    parser.add_argument("--sweep-only", choices=["wide", "narrow"], help="sweep one launch kind, then stop")
    args = parser.parse_args()
    grid = [tuple(int(v) for v in cfg.split(",")) for cfg in args.grid.split(";")] if args.grid else PLANES_GRID
    t0 = time.time()
    torch.manual_seed(0)
    results, copy = start_record(check)
    shapes = args.shapes.split(",")
    if not args.no_sweep:
        wide = [s for s in shapes if SHAPES[s][0] > int4_gemv.NARROW]
        narrow = [s for s in shapes if SHAPES[s][0] <= int4_gemv.NARROW]
        if args.sweep_only != "narrow":
            sweep(results, t0 + args.budget * 0.25, "planes_wide", "int4.planes", int4_gemv.CONFIG, "int4", grid, 1,
                  wide)
        if args.sweep_only != "wide":
            sweep(results, t0 + args.budget * 0.5, "planes_narrow", "int4.planes", int4_gemv.CONFIG, "int4_narrow",
                  grid, 1, narrow)
    if args.sweep_only:
        shapes = []
    results["planes_config"] = dict(int4_gemv.CONFIG)
    kernels = ["bf16.cublas", "int4.planes", "int4.planes_nopdl", "int4.skinny", "int4.tinygemm"]
    if args.gemlite:
        try:
            import gemlite  # noqa: F401

            kernels.append("int4.gemlite")
        except ImportError as exc:
            results["gemlite"] = f"not importable: {exc}"
    for shape in shapes:
        for rows in (int(r) for r in args.rows.split(",")):
            if time.time() - t0 > args.budget:
                results["stopped_early"] = f"budget reached at {shape} rows={rows}"
                break
            n, k = SHAPES[shape]
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            for kernel in kernels:
                int4_gemv.USE_PDL = kernel != "int4.planes_nopdl"
                time_row(results, copy, shape, rows, kernel, functools.partial(calls_for, kernel, n, k, x))
                int4_gemv.USE_PDL = True
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "int4_decode.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
