"""Batch-1 (and larger) all-reduce latency on the GPUs of one host: NCCL against the one-shot path.

Each of N spawned ranks joins through llamarun's own init_group (the groups the engine uses), then for
each size [rows, hidden] in bf16 times, per all-reduce: NCCL eager, NCCL inside a CUDA graph, the
one-shot all-reduce over symmetric memory eager and inside a graph. Graph numbers replay a graph of
REPS all-reduces back to back, which is how a decode step issues them (two per layer). The one-shot
result is checked against NCCL's before it is timed. Rank 0 prints a table and writes --json.

    python3 benchmarks/gpu_allreduce.py --ranks 2 --hidden 8192 --json $OUT/allreduce.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPS = 160  # all-reduces in one timed graph: a 70B decode step's count (2 per layer x 80)
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def _time(fn, iters: int) -> float:
    """Mean microseconds of one fn() call, after a warm-up, timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / iters


def _graphed(fn) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    return graph


def _rank(rank: int, world: int, port: int, hidden: int, out_path: str | None) -> None:
    import torch.distributed as dist

    from llamarun.parallel.group import init_group
    from llamarun.parallel.one_shot import OneShotAllReduce

    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0, timeout=timedelta(seconds=120))
    group = init_group(rank, world, "cuda", store=store, timeout_s=120)
    try:
        one_shot = OneShotAllReduce(group.group, group.device, torch.bfloat16, max_bytes=max(ROWS) * hidden * 2)
        why = ""
    except Exception as err:  # recorded: the path is then unavailable on this machine
        one_shot, why = None, f"{type(err).__name__}: {err}"
    rows_out = []
    for rows in ROWS:
        x = torch.randn(rows, hidden, device=group.device, dtype=torch.bfloat16)  # [rows, hidden]
        row = {"rows": rows, "bytes": x.numel() * 2}

        def nccl(x: torch.Tensor = x) -> None:
            dist.all_reduce(x, group=group.group)

        if one_shot is not None:  # checked first: the timed NCCL calls below sum x in place again and again
            want = x.clone()
            dist.all_reduce(want, group=group.group)
            got = one_shot(x)
            row["one_shot_max_error"] = float((got.float() - want.float()).abs().max())
        row["nccl_eager_us"] = _time(nccl, 200)
        graph = _graphed(nccl)
        row["nccl_graph_us"] = _time(graph.replay, 20) / REPS
        if one_shot is not None:
            x.normal_()  # finite again after NCCL's repeated in-place sums
            row["one_shot_eager_us"] = _time(lambda x=x: one_shot(x), 200)
            graph = _graphed(lambda x=x: one_shot(x))
            row["one_shot_graph_us"] = _time(graph.replay, 20) / REPS
        rows_out.append(row)
        dist.barrier(group=group.control)
    if rank == 0:
        gpu = torch.cuda.get_device_name(0)
        record = {"benchmark": "gpu_allreduce", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "gpus": f"{world} x {gpu}", "torch": torch.__version__,
                  "nccl": ".".join(map(str, torch.cuda.nccl.version())),
                  "hidden": hidden, "dtype": "bfloat16", "graph_reps": REPS, "one_shot_unavailable": why or None,
                  "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE"), "sizes": rows_out}
        print(f"all-reduce of [rows, {hidden}] bf16 over {world} x {gpu} (microseconds per all-reduce)")
        print(f"{'rows':>5} {'KB':>7} {'nccl':>8} {'nccl-graph':>11} {'1shot':>8} {'1shot-graph':>12} {'err':>8}")
        nan = float("nan")
        for r in rows_out:
            print(f"{r['rows']:>5} {r['bytes'] / 1024:>7.0f} {r['nccl_eager_us']:>8.1f} {r['nccl_graph_us']:>11.1f} "
                  f"{r.get('one_shot_eager_us', nan):>8.1f} {r.get('one_shot_graph_us', nan):>12.1f} "
                  f"{r.get('one_shot_max_error', nan):>8.2g}")
        if why:
            print("one-shot unavailable:", why)
        if out_path:
            with open(out_path, "w") as f:
                json.dump(record, f, indent=1)
    from llamarun.parallel.group import close_group

    close_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=torch.cuda.device_count())
    p.add_argument("--hidden", type=int, default=8192, help="activation width (8192: Llama 3.3 70B)")
    p.add_argument("--json", help="write the record here")
    args = p.parse_args()
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(args.ranks, port, args.hidden, args.json), nprocs=args.ranks,
                       start_method="spawn", join=True)


if __name__ == "__main__":
    main()
