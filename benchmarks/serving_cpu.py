"""Batched-engine throughput of the default model on CPU at 1, 8 and 32 concurrent requests.

The issue's target: aggregate tokens/s at 8 concurrent requests at least 3 times the single-request
figure. Every request has a random 128-token prompt and makes exactly 64 tokens (greedy, no stop
ids), so every level does the same work. Writes benchmarks/results/serving-cpu-<date>.json and .md.

    python benchmarks/serving_cpu.py [--requests 32] [--prompt-tokens 128] [--output-tokens 64]

The load average before and after is recorded: on a shared machine other jobs lower the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LEVELS = (1, 8, 32)
TARGET = 3.0


def measure(requests: int, prompt_tokens: int, output_tokens: int, weights: str,
            repeats: int) -> tuple[dict, list]:
    from llamarun.bench.offline import run_offline, warm_up
    from llamarun.bench.report import LevelResult, build_record, describe_machine, load_average
    from llamarun.llm.loading import load_model
    from llamarun.store.default_model import ensure_default_model

    machine = describe_machine()  # load average before any work of ours
    lm = load_model(str(ensure_default_model()), weights=weights,
                    kv_tokens=max(LEVELS) * (prompt_tokens + output_tokens + 16) + 4096)
    warm_up(lm.engine, lm.config.vocab_size)
    # Levels run interleaved, `repeats` rounds, best round kept per level: a burst of load from
    # another job on a shared machine then spoils one round of one level, not the comparison.
    best: dict[int, LevelResult] = {}
    runs: dict[int, list[float]] = {c: [] for c in LEVELS}
    for rep in range(repeats):
        for i, c in enumerate(LEVELS):
            r = run_offline(lm.engine, vocab_size=lm.config.vocab_size, requests=requests, concurrency=c,
                            prompt_tokens=prompt_tokens, output_tokens=output_tokens, seed=100 * rep + i)
            runs[c].append(round(r.output_tps, 2))
            if c not in best or r.output_tps > best[c].output_tps:
                best[c] = r
            print(f"round {rep + 1}, concurrency {c}: {r.output_tps:.1f} output tokens/s", flush=True)
    levels = [best[c] for c in LEVELS]
    for lv in levels:
        lv.extra["output_tps_rounds"] = runs[lv.concurrency]
    machine["load_average_after"] = load_average()
    settings = {"requests": requests, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
                "concurrency": list(LEVELS), "repeats": repeats, "weights": lm.weights,
                "dtype": str(lm.dtype).removeprefix("torch."), "device": lm.device,
                "kv_tokens": lm.engine.config.kv_tokens,
                "max_batch_tokens": lm.engine.config.max_batch_tokens,
                "load_seconds": round(lm.load_seconds, 2)}
    model = "smollm2:135m (SmolLM2-135M-Instruct Q4_1 GGUF)"
    record = build_record(model, "offline", settings, levels, machine)
    by_c = {lv["concurrency"]: lv for lv in record["levels"]}
    for kind in ("output", "total"):
        ratio = by_c[8][f"{kind}_tokens_per_s"] / by_c[1][f"{kind}_tokens_per_s"]
        record[f"ratio_{kind}_tps_8_vs_1"] = round(ratio, 2)
    record["target_ratio"] = TARGET
    record["meets_target"] = record["ratio_output_tps_8_vs_1"] >= TARGET
    return record, levels


def markdown(record: dict, table: str) -> str:
    s, m = record["settings"], record["machine"]
    before, after = m.get("load_average"), m.get("load_average_after")
    verdict = "meets" if record["meets_target"] else "does NOT meet"
    return "\n".join([
        f"# Batched engine throughput on CPU, {record['date'][:10]}", "",
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('torch_threads')} torch threads (CPU only). "
         f"Load average (1/5/15 min) before {before}, after {after}: the machine is shared."), "",
        (f"Model {record['model']}, {s['weights']} weights, {s['dtype']} compute. Offline: the batched "
         f"engine driven directly, {s['requests']} requests per level (best of {s['repeats']} interleaved "
         f"rounds), random {s['prompt_tokens']}-token prompts, exactly {s['output_tokens']} output tokens "
         f"each (greedy, no stop ids), a new request added as one finishes. TTFT counts from a request's "
         f"arrival in the engine (it includes waiting behind other prefills); TPOT is decode time per "
         f"token after the first."),
        "", "```", table, "```", "",
        "CPU seconds of this process per wall second (2.0: both cores all the time; less: other jobs "
        "took cores): "
        + ", ".join(f"{lv['cpu_per_wall']} at {lv['concurrency']}" for lv in record["levels"])
        + "; output tokens/s of each round: "
        + ", ".join(f"{lv['output_tps_rounds']} at {lv['concurrency']}" for lv in record["levels"]) + ".", "",
        (f"Aggregate output tokens/s at 8 concurrent requests / 1: "
         f"**{record['ratio_output_tps_8_vs_1']:.2f}x** "
         f"(total tokens/s {record['ratio_total_tps_8_vs_1']:.2f}x); "
         f"the target is at least {TARGET:.0f}x, "
         f"so this run {verdict} it."), ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="rounds over all levels; the best round counts")
    ap.add_argument("--weights", default="auto", choices=["auto", "exact", "int8"])
    args = ap.parse_args()
    from llamarun.bench.report import format_table, write_record

    record, levels = measure(args.requests, args.prompt_tokens, args.output_tokens, args.weights,
                             args.repeats)
    stem = RESULTS / f"serving-cpu-{dt.date.today().isoformat()}"
    write_record(stem.with_suffix(".json"), record)
    md = markdown(record, format_table(levels))
    stem.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
