"""A/B of llamarun settings on the default model on CPU: fresh processes, alternating, so that a shared
machine's load falls on every variant alike. Records the load average beside each figure.

    python benchmarks/cpu_ab.py --variant weights=int8 --variant weights=packed [--rounds 3] [--new-tokens 128]
    python benchmarks/cpu_ab.py --variant threads=1 --variant threads=2 --busy 1

A variant is `weights=MODE`, `threads=N|default`, `kernels=auto|off` (the native CPU kernels,
LLAMARUN_CPU_KERNELS), `step=auto|off` (the one-call native decode step, LLAMARUN_CPU_DECODE_STEP) or several
joined by `,` (threads are chosen before torch loads, as the CLI chooses them: `default` samples the free cores).
`--busy N` keeps N processes spinning (one per core at most) for the whole run: the "other program on the machine"
condition.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def parse_variant(text: str) -> dict[str, str]:
    """`weights=int4,threads=1` -> {"weights": "int4", "threads": "1"} (keys: weights, threads, kernels, step)."""
    out = dict(part.split("=", 1) for part in text.split(",") if part)
    unknown = set(out) - {"weights", "threads", "kernels", "step"}
    if unknown:
        raise SystemExit(f"unknown variant key(s) {sorted(unknown)}: use weights=, threads=, kernels= and step=")
    return out


def _one(gguf: str, variant: dict[str, str], new_tokens: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMARUN_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["LLAMARUN_CPU_KERNELS"] = variant.get("kernels", "auto")
    env["LLAMARUN_CPU_DECODE_STEP"] = variant.get("step", "auto")
    threads = variant.get("threads", "default")
    count = "None" if threads == "default" else int(threads)
    # as the CLI does: threads (and the wait policy) chosen before torch loads
    code = (f"from llamarun.utils.threads import prepare; prepare({count}); "
            f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import cpu_default_model as b; "
            f"print('RESULT', json.dumps(b._llamarun({gguf!r}, {new_tokens}, 1, {variant.get('weights', 'auto')!r})))")
    load_before = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:])
    return {**result, "load_avg": load_before}


def _spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--busy", type=int, default=0, help="processes spinning during the run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from llamarun.store.default_model import ensure_default_model

    gguf = str(ensure_default_model())
    variants = [parse_variant(v) for v in args.variant]
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    runs: list[list[dict]] = [[] for _ in variants]
    try:
        for _ in range(args.rounds):
            for i, variant in enumerate(variants):
                runs[i].append(_one(gguf, variant, args.new_tokens))
                print(args.variant[i], json.dumps(runs[i][-1]), flush=True)
    finally:
        for s in spinners:
            s.kill()
    summary = []
    for name, rs in zip(args.variant, runs, strict=True):
        summary.append({"variant": name, "engine": rs[0]["engine"], "threads": rs[0]["threads"],
                        "decode_tps_median": statistics.median(r["decode_tps"] for r in rs),
                        "prompt_tps_median": statistics.median(r["prompt_tps"] for r in rs),
                        "load_s_median": statistics.median(r["load_s"] for r in rs),
                        "load_avg": [round(r["load_avg"], 2) for r in rs], "busy": args.busy})
        print(json.dumps(summary[-1]))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
