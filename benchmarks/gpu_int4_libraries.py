"""INT4 (W4A16) matmul libraries from PyPI beside ours, at Llama 3.3 70B and 3.1 8B shapes, 1 to 16 rows.

Kernels (group 128 wherever the library takes a group size):
- `int4.ours`: `llamarun.kernels.int4_matmul.int4_matmul` (the planes GEMV to 4 rows, then the skinny kernel);
- `int4.tinygemm`: torch's `_weight_int4pack_mm` (gpt-fast's kernel and torchao's `tile_packed_to_4d` layout);
- `torchao.plain`: torchao's `Int4WeightOnlyConfig` default layout, `Int4Tensor`, run by mslk's CUTLASS
  `bf16i4bf16_rowwise` (torchao 0.16 on needs the `mslk-cuda` package for its Hopper int4 paths);
- `torchao.preshuffled`: `Int4WeightOnlyConfig(int4_packing_format="preshuffled")`, mslk's `bf16i4bf16_shuffled`;
- `bnb.nf4`: bitsandbytes' `matmul_4bit` on NF4 weights in blocks of 128 with a float32 absmax per block. NF4 is
  a 16-entry table, not affine int4: the speed compares, the numbers do not (its check is against bitsandbytes'
  own `dequantize_4bit`, and the JSON gives how far NF4 lands from the affine weight for scale);
- `conch.w4a16`: conch-triton-kernels' `mixed_precision_gemm` (Triton; one fixed 128x64x64 tile, no autotune).

Each library runs in its own child process (`--child LIB`), so an import that fails, a shared object that
crashes or a kernel that leaves a sticky CUDA error stops only that library; its reason (the import error's
text, the child's exit and the tail of its stderr) goes in the JSON instead of rows. Each child first checks
its kernels against the reference dequantization on one shape, with weights made by the library's own
quantizer from an affine weight that lies exactly on a 4-bit grid (so an affine library recovers it), then
times every (shape, rows) as CUDA-graph replays over enough weight copies that the L2 never serves them
(`graph_ms`/`copies` from gpu_quant_kernels.py). Every kernel is charged the same bytes, those of the affine
int4 g128 layout (N*K/2 + 4*N*K/128; bitsandbytes' float32 absmax per 128 weighs the same), and the fraction
is of the card's copy bandwidth measured by the parent in the same call. A kernel that cannot be captured in a
graph is timed eagerly instead, and its rows say so (`timing`). The budget is shared among the libraries by
kernel count, each child stopping cleanly at its deadline (killed 20 s past it).

    PYTHONPATH=. python benchmarks/gpu_int4_libraries.py [--budget 240] [--libs base,torchao,bitsandbytes,conch]
    PYTHONPATH=. python benchmarks/gpu_int4_libraries.py --dry-run     # no GPU: which libraries import here

Writes $OUT/int4_libraries.json (or --json PATH), rewritten after each library, and each child's stderr to
$OUT/int4_libraries.<lib>.stderr.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from int4_library_kernels import DEVICE, GROUP, KERNEL_CLASSES, load  # noqa: E402  (after the path insert)

# shape -> (N, K), as gpu_quant_kernels.SHAPES; the first five are the ones asked for, the rest while budget lasts.
DEFAULT_SHAPES = "70b.qkv,70b.o,70b.gate_up,70b.down,8b.gate_up,8b.qkv,8b.o,8b.down"
DEFAULT_ROWS = "1,4,8,16"
CHECK_SHAPE = (4096, 4096)  # (N, K): 8b.o
CHECK_ROWS = (1, 16)
TOLERANCE = 2e-2  # max |got - want| / max |want| against float32 x @ dequantize(w)^T

LIBRARIES = {  # name -> (distributions whose versions are recorded, kernels)
    "base": ((), ("int4.ours", "int4.tinygemm")),
    "torchao": (("torchao", "mslk-cuda"), ("torchao.plain", "torchao.preshuffled")),
    "bitsandbytes": (("bitsandbytes",), ("bnb.nf4",)),
    "conch": (("conch-triton-kernels",), ("conch.w4a16",)),
}


# Looked at for issue 8 and not carried to the device (one call carries at most 64 MiB); the JSON repeats these.
NOT_CARRIED = {
    "sgl-kernel": "0.3.21 (latest): its one wheel (cp310-abi3, manylinux2014) is 535.6 MB, sgl_kernel/sm90/"
                  "common_ops.abi3.so alone 361 MB: over the 64 MiB a device call carries",
    "marlin-kernels": "0.3.7 (latest): PyPI has only a 15 kB sdist whose setup.py imports torch to build a CUDA "
                      "extension (nvcc on the device, minutes of compile); no wheel",
    "vllm": "0.33.0: its Marlin/Machete W4A16 GEMMs come only inside a 336.4 MB wheel",
    "lmdeploy": "0.18.0: its TurboMind W4A16 GEMM comes only inside a 106.7 MB wheel",
    "gptqmodel": "no cp312 manylinux wheel on PyPI (sdist only; builds its CUDA kernels at install)",
    "optimum-quanto": "0.2.7 (2025-03): its Marlin int4 GEMM is CUDA C++ compiled at first use "
                      "(torch.utils.cpp_extension), which needs nvcc and ninja and minutes on the device",
    "torchao marlin_sparse": "gone from torchao's int4 packing formats since 0.16 (0.15 had MARLIN_SPARSE, for "
                             "torch 2.9/2.10, and it needs 2:4-sparse weights)",
    "fbgemm-gpu-genai": "1.6.0 (its torch 2.11 build, 35.8 MB) holds the same bf16i4bf16 kernels as mslk-cuda "
                        "1.1.0; torchao >= 0.16 calls them through mslk, so mslk-cuda is what is carried",
}


def dist_versions(names) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(exc: BaseException) -> str:
    """The exception and the ones it came from (a failed shared-object load says why only in its cause)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}".strip())
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)[:4000]


def int4_bytes(n: int, k: int) -> int:
    return n * k // 2 + 4 * n * (k // GROUP)


def reference_weight(n: int, k: int):
    """An affine int4 g128 weight whose every group spans the full grid (q = 0 and 15 occur, minimum = -8 scale,
    scales representable in bf16), and its dequantization in bf16: any min/max affine quantizer, with a float
    or an integer zero point, recovers it."""
    import torch

    from llamarun.quant.layouts import Int4Weight, dequantize, pack_nibbles

    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device=DEVICE)
    q[:, 0::GROUP], q[:, 1::GROUP] = 0, 15
    s = (torch.rand(n, k // GROUP, device=DEVICE) * 0.02 + 0.005).to(torch.bfloat16)
    w = Int4Weight(pack_nibbles(q), s, -8 * s, GROUP)
    return w, dequantize(w, torch.bfloat16)


def rel_err(got, want) -> float:
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def check_call(name: str, mods: dict, w, w_bf16, w_ref):
    """`name`'s matmul on the check weight (packed by the library's own quantizer from `w_bf16`), and the
    float32 [N, K] weight it should multiply by."""
    import torch

    from llamarun.kernels.int4_matmul import int4_matmul

    if name == "int4.ours":
        return (lambda x: int4_matmul(x, w)), w_ref
    if name == "int4.tinygemm":
        packed, sz = mods["tinygemm_pack"](w)
        return (lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, GROUP, sz)), w_ref
    kernel = KERNEL_CLASSES[name](name, mods)
    packed = kernel.quantize(w_bf16.clone())
    return (lambda x: kernel.run(packed, x)), kernel.reference(packed, w_ref)


def check(lib: str, mods: dict, kernels: list[str]) -> dict:
    """Each kernel on CHECK_SHAPE at CHECK_ROWS against float32 x @ W^T, W = llamarun's `dequantize`."""
    import torch

    from llamarun.quant.layouts import dequantize

    n, k = CHECK_SHAPE
    torch.manual_seed(1)
    w, w_bf16 = reference_weight(n, k)
    w_ref = dequantize(w)  # float32 [N, K]
    out = {}
    for name in kernels:
        entry: dict = {"shape": [n, k], "tolerance": TOLERANCE, "against": "llamarun.quant.layouts.dequantize",
                       "rel_err": {}}
        try:
            run, want_w = check_call(name, mods, w, w_bf16, w_ref)
            if name == "bnb.nf4":
                entry["against"] = "bitsandbytes.functional.dequantize_4bit (NF4 is not affine int4)"
                entry["nf4_weight_vs_affine_rel_err"] = rel_err(want_w, w_ref)
            for rows in CHECK_ROWS:
                x = torch.randn(rows, k, device=DEVICE, dtype=torch.bfloat16)
                entry["rel_err"][str(rows)] = rel_err(run(x), x.float() @ want_w.t())
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            entry["passed"] = all(e <= TOLERANCE for e in entry["rel_err"].values())
        except Exception as exc:
            entry["passed"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            entry["traceback"] = traceback.format_exc()[-3000:]
        print(f"check {name:20s} {json.dumps({key: entry.get(key) for key in ('rel_err', 'passed', 'error')})}",
              flush=True)
        out[name] = entry
    return out


# ---------------------------------------------------------------------------------------------------- child


def eager_ms(calls, replays: int = 10) -> float:
    """Milliseconds per call run eagerly (CPU launch cost included where it exceeds the GPU's), for a kernel
    that cannot be captured in a CUDA graph."""
    import torch

    for call in calls:
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        for call in calls:
            call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays / len(calls)


def child(args) -> None:
    """One library: import, check, time; writes its part to args.part as it goes."""
    part: dict = {"lib": args.child, "versions": dist_versions(LIBRARIES[args.child][0]), "rows": [], "errors": []}

    def save() -> None:
        with open(args.part, "w") as f:
            json.dump(part, f, indent=1)

    try:
        mods = load(args.child)
    except BaseException as exc:
        part["status"] = "unavailable"
        part["reason"] = describe(exc)
        part["traceback"] = traceback.format_exc()[-4000:]
        save()
        print(f"{args.child}: unavailable: {part['reason'][:300]}", flush=True)
        return
    part["status"] = "importable"
    for key in ("mslk_version", "native"):
        if key in mods:
            part[key] = mods[key]
    if args.dry_run:
        save()
        print(f"{args.child}: importable {part['versions']}", flush=True)
        return

    import torch
    from gpu_quant_kernels import SHAPES, copies, graph_ms

    kernels = list(LIBRARIES[args.child][1])
    with torch.no_grad():
        part["check"] = check(args.child, mods, kernels)
        save()
        runnable = [name for name in kernels if "error" not in part["check"][name]]
        part["status"] = "ran" if runnable else "failed"
        if not runnable:
            part["reason"] = "; ".join(f"{name}: {part['check'][name]['error']}" for name in kernels)
        rows_list = [int(r) for r in args.rows.split(",")]
        copy = args.copy_gbps * 1e9
        for shape in args.shapes.split(","):
            n, k = SHAPES[shape]
            nbytes = int4_bytes(n, k)
            w = torch.randn(n, k, device=DEVICE, dtype=torch.bfloat16) * 0.02 if args.child != "base" else None
            for name in runnable:
                if time.time() > args.deadline:
                    part["stopped_early"] = f"deadline reached at {shape} {name}"
                    break
                weights = None
                try:
                    if args.child != "base":
                        kernel = KERNEL_CLASSES[name](name, mods)
                        weights = [kernel.random(n, k, w) for _ in range(copies(nbytes))]
                except Exception as exc:  # the library cannot pack this shape: say so, go on
                    part["errors"].append({"shape": shape, "kernel": name, "stage": "pack",
                                           "error": f"{type(exc).__name__}: {exc}"[:1000]})
                    print(f"{shape} {name}: pack failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                    torch.cuda.empty_cache()
                    continue
                for rows in rows_list:
                    if time.time() > args.deadline:
                        part["stopped_early"] = f"deadline reached at {shape} rows={rows} {name}"
                        break
                    x = torch.randn(rows, k, device=DEVICE, dtype=torch.bfloat16)
                    try:
                        if name == "int4.ours":
                            calls, _ = mods["make_kernel"]("int4.ours", n, k, x)
                        elif name == "int4.tinygemm":
                            calls, _ = mods["calls_for"]("int4.tinygemm", n, k, x)
                        else:
                            calls = [lambda p=p, kernel=kernel, x=x: kernel.run(p, x) for p in weights]
                        timing = "graph"
                        try:
                            ms = graph_ms(calls)
                        except Exception as exc:  # not capturable: time it eagerly, launches included, and say so
                            timing = f"eager (graph capture failed: {type(exc).__name__}: {str(exc)[:300]})"
                            ms = eager_ms(calls)
                    except Exception as exc:  # report the failure, go on with the other rows
                        part["errors"].append({"shape": shape, "rows": rows, "kernel": name, "stage": "time",
                                               "error": f"{type(exc).__name__}: {exc}"[:1000]})
                        print(f"{shape:12s} rows={rows:<3d} {name:20s} {type(exc).__name__}: {str(exc)[:200]}",
                              flush=True)
                        continue
                    finally:
                        calls = None
                        if name in ("int4.ours", "int4.tinygemm"):
                            torch.cuda.empty_cache()
                    gbps = nbytes / ms / 1e6
                    part["rows"].append({"shape": shape, "rows": rows, "kernel": name, "us": ms * 1e3,
                                         "GBps": gbps, "copy_fraction": gbps * 1e9 / copy, "timing": timing})
                    print(f"{shape:12s} rows={rows:<3d} {name:20s} {ms * 1e3:8.1f} us {100 * gbps * 1e9 / copy:5.1f}%"
                          + ("" if timing == "graph" else f"  [{timing}]"), flush=True)
                del weights
                torch.cuda.empty_cache()
            del w
            torch.cuda.empty_cache()
            save()
            if part.get("stopped_early"):
                break
    save()


# ---------------------------------------------------------------------------------------------------- parent


def run_child(lib: str, args, deadline: float, copy_gbps: float, out_dir: str | None) -> dict:
    fd, part_path = tempfile.mkstemp(prefix=f"int4lib-{lib}-", suffix=".json")
    os.close(fd)
    os.unlink(part_path)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", lib, "--part", part_path,
           "--deadline", str(deadline), "--copy-gbps", str(copy_gbps), "--shapes", args.shapes, "--rows", args.rows]
    if args.dry_run:
        cmd.append("--dry-run")
    err_path = os.path.join(out_dir, f"int4_libraries.{lib}.stderr.txt") if out_dir else part_path + ".stderr"
    grace = 20.0  # a child stops itself at its deadline; past this it is killed
    started = time.time()
    with open(err_path, "w") as err:
        try:
            proc = subprocess.run(cmd, stdout=None, stderr=err, timeout=max(10.0, deadline - time.time()) + grace)
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"killed at its deadline + {grace:.0f} s"
    tail = Path(err_path).read_text(errors="replace")[-3000:]
    try:
        part = json.loads(Path(part_path).read_text())
    except (OSError, ValueError):
        part = {"lib": lib, "status": "crashed", "rows": [], "versions": dist_versions(LIBRARIES[lib][0])}
    part["child_rc"] = rc
    part["child_s"] = round(time.time() - started, 1)
    if rc != 0:
        if part.get("status") in ("importable", "ran"):
            part["status"] = "crashed" if part.get("status") == "importable" or not part["rows"] else "partial"
        part.setdefault("reason", f"child exited {rc}; stderr tail: {tail[-1500:]}")
        part["stderr_tail"] = tail
    for path in (part_path,) + (() if out_dir else (err_path,)):
        with contextlib.suppress(OSError):
            os.unlink(path)
    return part


def summary(results: dict) -> None:
    cells: dict = {}
    for row in results["rows"]:
        cells.setdefault((row["shape"], row["rows"]), []).append((row["us"], row["kernel"]))
    print("\nfastest per cell (us):")
    for (shape, rows), entries in cells.items():
        entries.sort()
        print(f"  {shape:12s} rows={rows:<3d} " + "  ".join(f"{kernel} {us:.1f}" for us, kernel in entries[:4]))
    print("libraries:")
    for lib, part in results["libraries"].items():
        reason = f": {str(part.get('reason', ''))[:200]}" if part.get("reason") else ""
        print(f"  {lib:13s} {part.get('status')} {part.get('versions')}{reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=240.0, help="seconds; then stop cleanly and write the JSON")
    parser.add_argument("--libs", default=",".join(LIBRARIES))
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--rows", default=DEFAULT_ROWS)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: import each library (in its child) and "
                        "write the JSON with its versions and reasons")
    parser.add_argument("--json", help="default $OUT/int4_libraries.json when OUT is set")
    parser.add_argument("--child", choices=sorted(LIBRARIES), help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--copy-gbps", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    t0 = time.time()
    end = t0 + args.budget
    out_dir = os.environ.get("OUT")
    json_path = args.json or (os.path.join(out_dir, "int4_libraries.json") if out_dir else None)
    import torch
    from gpu_quant_kernels import SHAPES

    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            parser.error(f"unknown shape {shape}; known: {', '.join(SHAPES)}")
    libs = args.libs.split(",")
    for lib in libs:
        if lib not in LIBRARIES:
            parser.error(f"unknown library {lib}; known: {', '.join(LIBRARIES)}")
    results: dict = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
                     "torch_cuda": torch.version.cuda, "dry_run": args.dry_run, "budget_s": args.budget,
                     "group_size": GROUP, "shapes": args.shapes.split(","), "row_counts": args.rows.split(","),
                     "bytes_per_call": "N*K/2 + 4*N*K/128 for every kernel (affine int4 g128)",
                     "nvcc": shutil.which("nvcc"), "versions": dist_versions(
                         ["torch", "triton"] + [d for lib in libs for d in LIBRARIES[lib][0]]),
                     "wheels": sorted(p.name for p in Path(".whl/int4libs").glob("*.whl")),
                     "not_carried": NOT_CARRIED, "libraries": {}, "rows": []}

    def write() -> None:
        if json_path:
            with open(json_path, "w") as f:
                json.dump(results, f, indent=1)

    copy_gbps = 0.0
    if not args.dry_run:
        from llamarun.bench.bandwidth import measure_copy_bandwidth

        results["card"] = torch.cuda.get_device_name()
        copy_gbps = measure_copy_bandwidth("cuda") / 1e9
        torch.cuda.empty_cache()
        results["copy_GBps"] = copy_gbps
        print(f"{results['card']}: copy {copy_gbps:.0f} GB/s; torch {torch.__version__}", flush=True)
    write()
    for i, lib in enumerate(libs):
        left = end - time.time()
        if left <= 5 and not args.dry_run:
            results["libraries"][lib] = {"status": "skipped", "reason": "budget spent before this library",
                                         "versions": dist_versions(LIBRARIES[lib][0])}
            continue
        # a share of what is left by kernel count, so one slow library cannot starve those after it
        share = len(LIBRARIES[lib][1]) / sum(len(LIBRARIES[later][1]) for later in libs[i:])
        deadline = time.time() + (max(5.0, left * share) if not args.dry_run else 120.0)
        print(f"=== {lib} ({', '.join(LIBRARIES[lib][1])}) until +{deadline - t0:.0f} s", flush=True)
        part = run_child(lib, args, deadline, copy_gbps, out_dir)
        results["rows"].extend(part.pop("rows", []))
        results["libraries"][lib] = part
        write()
    results["elapsed_s"] = round(time.time() - t0, 1)
    write()
    summary(results)
    if json_path:
        print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
