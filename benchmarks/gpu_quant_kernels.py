"""Linear-layer kernels at Llama 3.1 8B and 3.3 70B shapes: bf16, FP8 and INT4 weights, ours against torch's.

For each weight shape and row count it times, as CUDA-graph replays over enough distinct weight copies that
nothing is served from the L2 (the GPU's own time per matmul):
- bf16: cuBLAS (`F.linear`), the reference every packed format is read against;
- FP8: our weight-only path (`kernels/fp8_matmul.py`: the skinny tensor-core kernel to 16 rows, then
  expand + cuBLAS) and `torch._scaled_mm` with per-token activation
  quantization included (the W8A8 path);
- INT4 (group 128): our path (`kernels/int4_matmul.py`, the same split) and torch's tinygemm `_weight_int4pack_mm`
  (gpt-fast's int4 kernel);
and reports GB/s of weight bytes read and the fraction of the card's copy bandwidth. `--sweep` first tries
launch configurations of the decode kernels (GEMV at one row, skinny at four) and uses the best for the table.

    PYTHONPATH=. python benchmarks/gpu_quant_kernels.py [--sweep] [--budget SECONDS]

Writes $OUT/quant_kernels.json when OUT is set.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llamarun.bench.bandwidth import measure_copy_bandwidth
from llamarun.kernels import gemv as gemv_mod
from llamarun.kernels import skinny_matmul as skinny_mod
from llamarun.kernels.fp8_matmul import fp8_matmul
from llamarun.kernels.int4_matmul import int4_matmul
from llamarun.quant.layouts import Fp8Weight, Int4Weight, dequantize, pack_nibbles

SHAPES = {  # name -> (N, K)
    "8b.qkv": (6144, 4096), "8b.o": (4096, 4096), "8b.gate_up": (28672, 4096), "8b.down": (4096, 14336),
    "8b.lm_head": (128256, 4096),
    "70b.qkv": (10240, 8192), "70b.o": (8192, 8192), "70b.gate_up": (57344, 8192), "70b.down": (8192, 28672),
}
# One rank's share of 70B at TP=2: column-parallel layers split N, row-parallel layers split K.
TP2_SHAPES = {"70b-tp2.qkv": (5120, 8192), "70b-tp2.o": (8192, 4096), "70b-tp2.gate_up": (28672, 8192),
              "70b-tp2.down": (8192, 14336)}
SWEEP_SETS = {"default": ["8b.gate_up", "8b.down", "8b.o", "70b.down"], "70b-tp2": list(TP2_SHAPES)}
ROWS = (1, 4, 16, 256)
COPIES_BYTES = 600 * 2**20  # at least this many weight bytes cycled per graph, so the L2 (50 MB) never serves them
GROUP = 128


def graph_ms(calls: list[Callable[[], object]], replays: int = 10) -> float:
    """Milliseconds per call: one CUDA graph runs every call once; the mean over replays."""
    for call in calls:  # compile and warm outside the capture
        call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays / len(calls)


def time_row(results: dict, copy: float, shape: str, rows: int, kernel: str,
             make: Callable[[], tuple[list[Callable[[], object]], int] | None]) -> None:
    """Time one kernel at one shape (`make()` -> its calls and the bytes they read, or None when it does not
    apply) and add its row to `results` with the fraction of the `copy` bandwidth; a failure is printed, and
    the next kernel goes on."""
    try:
        made = make()
        if made is None:
            return
        calls, nbytes = made
        ms = graph_ms(calls)
    except Exception as exc:  # report the failure, go on with the others
        print(f"{shape} rows={rows} {kernel}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        return
    finally:
        torch.cuda.empty_cache()
    gbps = nbytes / ms / 1e6
    results["rows"].append({"shape": shape, "rows": rows, "kernel": kernel, "us": ms * 1e3, "GBps": gbps,
                            "copy_fraction": gbps * 1e9 / copy})
    print(f"{shape:16s} rows={rows:<3d} {kernel:16s} {ms * 1e3:8.1f} us {100 * gbps * 1e9 / copy:5.1f}%", flush=True)


def copies(nbytes: int) -> int:
    return max(1, min(64, -(-COPIES_BYTES // nbytes)))


def make_int4(n: int, k: int) -> Int4Weight:
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
    scales = torch.rand(n, k // GROUP, device="cuda", dtype=torch.bfloat16) * 0.01
    return Int4Weight(pack_nibbles(q), scales, -8 * scales, GROUP)


def make_fp8(n: int, k: int) -> Fp8Weight:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16).to(torch.float8_e4m3fn)
    return Fp8Weight(w, torch.rand(n, device="cuda") * 0.01)


def tinygemm_pack(w: Int4Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Our int4 layout in torch's tinygemm form: [N, K/2] uint8 nibbles (high nibble first) and scales+zeros."""
    from llamarun.quant.layouts import unpack_nibbles

    q = unpack_nibbles(w.qweight)  # [N, K] 0..15
    packed = (q[:, 0::2] << 4 | q[:, 1::2]).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
    # tinygemm: w = (q - 8) * scale + zero  ->  zero = min + 8 * scale
    zeros = w.mins.float() + 8 * w.scales.float()
    sz = torch.stack([w.scales.float(), zeros], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)  # [K/G, N, 2]
    return packed, sz


def quant_act(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0  # [M, 1]
    return (x / scale).to(torch.float8_e4m3fn), scale


def make_kernel(kernel: str, n: int, k: int, x: torch.Tensor) -> tuple[list[Callable[[], object]], int] | None:
    """Calls of `kernel` over enough weight copies to defeat the L2, and the weight bytes one call reads."""
    rows = x.shape[0]
    family, impl = kernel.split(".")
    if family == "bf16":
        nbytes = n * k * 2
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies(nbytes))]
        return [lambda w=w: F.linear(x, w) for w in ws], nbytes
    if family == "fp8":
        nbytes = n * k + 4 * n
        ws = [make_fp8(n, k) for _ in range(copies(nbytes))]
        if impl == "ours":
            return [lambda w=w: fp8_matmul(x, w) for w in ws], nbytes
        if rows < 16:
            return None

        def scaled(wt: torch.Tensor, scale: torch.Tensor) -> object:
            xq, xs = quant_act(x)
            return torch._scaled_mm(xq, wt, scale_a=xs, scale_b=scale, out_dtype=torch.bfloat16)
        return [lambda w=w: scaled(w.weight.t(), w.scale.reshape(1, -1)) for w in ws], nbytes
    nbytes = n * k // 2 + 4 * n * (k // GROUP)
    ws = [make_int4(n, k) for _ in range(copies(nbytes))]
    if impl == "ours":
        return [lambda w=w: int4_matmul(x, w) for w in ws], nbytes
    packed = [tinygemm_pack(w) for w in ws]
    return [lambda p=p: torch.ops.aten._weight_int4pack_mm(x, p[0], GROUP, p[1]) for p in packed], nbytes


KERNELS = ("bf16.cublas", "fp8.ours", "fp8.scaled_mm", "int4.ours", "int4.tinygemm")


def check(n: int = 1024, k: int = 4096) -> list[str]:
    """Each kernel against the reference at a real width, rows 1, 4 and 64."""
    bad = []
    for rows in (1, 4, 16, 64):
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        w4, w8 = make_int4(n, k), make_fp8(n, k)
        pairs = [("int4", int4_matmul(x, w4), x.float() @ dequantize(w4).t()),
                 ("fp8", fp8_matmul(x, w8), x.float() @ dequantize(w8).t())]
        for name, got, want in pairs:
            err = ((got.float() - want).abs().max() / want.abs().max()).item()
            if err > 2e-2:
                bad.append(f"{name} rows={rows}: relative error {err:.3g}")
    return bad


def sweep(results: dict, shapes: list[str], kinds: tuple[str, ...] = ("fp8", "int4")) -> None:
    """Launch configurations of the decode kernels: the GEMV at one row, the skinny kernel at four.

    Sets `gemv.CONFIG` and `skinny_matmul.CONFIG` to the best for the table that follows.
    """
    best: dict[str, dict] = {}
    every = {**SHAPES, **TP2_SHAPES}
    plans = [
        ("gemv", gemv_mod.CONFIG, "fp8", 1, [(bn, bk, w) for bn in (1, 2, 4, 8) for bk in (512, 1024, 2048, 4096)
                                             for w in (2, 4, 8) if bn * bk <= 16384]),
        ("gemv", gemv_mod.CONFIG, "int4", 1, [(bn, bk, w) for bn in (8, 16, 32) for bk in (1024, 2048, 4096)
                                              for w in (4, 8)]),
        ("skinny", skinny_mod.CONFIG, "fp8", 4, [(bn, bk, 8 if bn == 128 else 4, st) for bn in (16, 32, 64, 128)
                                                  for bk in (64, 128, 256) for st in (3, 4)]),
        ("skinny", skinny_mod.CONFIG, "int4", 4, [(bn, bk, 8 if bn == 128 else 4, st) for bn in (32, 64, 128)
                                                   for bk in (64, 128) for st in (3, 4)]),
    ]
    for name, table, kind, rows, grid in plans:
        if kind not in kinds:
            continue
        scores: dict[tuple, float] = {c: 0.0 for c in grid}
        for shape in shapes:
            n, k = every[shape]
            x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            calls, _ = make_kernel(f"{kind}.ours", n, k, x)
            for cfg in grid:
                if cfg not in scores:
                    continue
                table[kind] = cfg
                try:
                    scores[cfg] += graph_ms(calls)
                except Exception as exc:  # a config that does not compile is dropped
                    print(f"  {name} {kind} {cfg} failed: {type(exc).__name__}: {str(exc)[:120]}")
                    del scores[cfg]
            del calls
            torch.cuda.empty_cache()
        ranked = sorted(scores.items(), key=lambda item: item[1])
        for cfg, total in ranked[:5]:
            print(f"  sweep {name} {kind} rows={rows} {cfg}: {total * 1e3:.1f} us")
        table[kind] = ranked[0][0]
        best[f"{name}.{kind}"] = {"config": ranked[0][0], "total_us": ranked[0][1] * 1e3}
    results["sweep_best"] = best
    print("best:", json.dumps(best), flush=True)
    for key, entry in best.items():  # the line a later run in the same call can export (kernels read it)
        print(f"export LLAMARUN_{key.replace('.', '_').upper()}={','.join(map(str, entry['config']))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--sweep-set", choices=sorted(SWEEP_SETS), default="default",
                        help="the shapes the sweep sums over (70b-tp2: one rank's share of 70B at TP=2)")
    parser.add_argument("--sweep-kinds", default="fp8,int4")
    parser.add_argument("--sweep-only", action="store_true", help="stop after the sweep (no table)")
    args = parser.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    results: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    import triton

    results["triton"] = triton.__version__
    copy = measure_copy_bandwidth("cuda")
    results["copy_GBps"] = copy / 1e9
    results["check_failures"] = check()
    print("copy GB/s", round(copy / 1e9), "check failures:", results["check_failures"], flush=True)
    if args.sweep or args.sweep_only:
        sweep(results, SWEEP_SETS[args.sweep_set], tuple(args.sweep_kinds.split(",")))
    table = {} if args.sweep_only else SHAPES
    for shape, rows in itertools.product(table, ROWS):
        if time.time() - t0 > args.budget:
            results["stopped_early"] = f"budget reached at {shape} rows={rows}"
            break
        n, k = SHAPES[shape]
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        for kernel in KERNELS:
            try:
                made = make_kernel(kernel, n, k, x)
                if made is None:
                    continue
                calls, nbytes = made
                ms = graph_ms(calls)
            except Exception as exc:  # report the failure, go on with the others
                print(f"{shape} rows={rows} {kernel}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            finally:
                torch.cuda.empty_cache()
            gbps = nbytes / ms / 1e6
            row = {"shape": shape, "rows": rows, "kernel": kernel, "us": ms * 1e3, "GBps": gbps,
                   "copy_fraction": gbps * 1e9 / copy}
            results["rows"].append(row)
            print(f"{shape:12s} rows={rows:<4d} {kernel:15s} {ms * 1e3:9.1f} us {gbps:8.0f} GB/s "
                  f"{100 * row['copy_fraction']:5.1f}%", flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "quant_kernels.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
