"""Turn the files of one benchmarks/gpu_decode.py run into a record under benchmarks/results/.

    python benchmarks/write_record.py /path/to/gpu_decode/out [--results benchmarks/results]

Reads env.json, bandwidth.json, batch1.json, sweep.json, peer.json and summary.json (any may be missing:
a failed stage leaves its numbers out) and writes gpu-decode-<card>-<date>.json (the summary plus every
stage's full output) and .md (the tables). gpu_decode.py uses `summarize` and `format_summary` for its
own closing table. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
STAGE_FILES = ("env", "bandwidth", "batch1", "sweep", "peer")


def load(folder: Path, name: str) -> dict | None:
    """A stage's JSON, or None when the stage left no (readable) file."""
    try:
        return json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _fraction(step_bytes: float | None, tokens_per_s: float | None, copy_gb_s: float | None) -> float | None:
    """Decode bytes per step x steps per second over the copy bandwidth (one rule for both engines)."""
    if step_bytes is None or tokens_per_s is None or not copy_gb_s:
        return None
    return float(f"{step_bytes * tokens_per_s / (copy_gb_s * 1e9):.4g}")


def _level(record: dict | None, concurrency: int) -> dict | None:
    for level in (record or {}).get("levels", []):
        if level.get("concurrency") == concurrency:
            return level
    return None


def summarize(folder: Path, stages: dict | None = None) -> dict[str, Any]:
    """The run's headline numbers: batch-1 llamarun vs gpt-fast, the sweep, versions, stage outcomes."""
    env, bw = load(folder, "env") or {}, load(folder, "bandwidth") or {}
    batch1, sweep, peer = load(folder, "batch1"), load(folder, "sweep"), load(folder, "peer")
    if stages is None:
        stages = (load(folder, "summary") or {}).get("stages", {})
    copy = bw.get("copy_gb_s") or (batch1 or {}).get("bandwidth", {}).get("copy_gb_s")
    first = batch1 or sweep or {}
    ours = _level(batch1, 1)
    llamarun = None
    if ours:
        llamarun = {k: ours.get(k) for k in (
            "decode_tokens_per_s", "output_tokens_per_s", "prompt_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms",
            "tpot_p50_ms", "tpot_p99_ms", "requests", "decode_bytes_per_step")}
        llamarun["decode_bw_fraction"] = _fraction(ours.get("decode_bytes_per_step"),
                                                   ours.get("decode_tokens_per_s"), copy)
        llamarun["build_seconds"] = (batch1 or {}).get("settings", {}).get("load_seconds")
        llamarun["complete"] = (batch1 or {}).get("complete")
    gpt_fast = None
    if peer and peer.get("tokens_per_s") is not None:
        gpt_fast = {k: peer.get(k) for k in (
            "decode_tokens_per_s", "tokens_per_s", "prompt_tokens_per_s", "compile_s", "samples_tokens_per_s",
            "decode_step_bytes", "config_source", "complete")}
        gpt_fast["decode_bw_fraction"] = _fraction(peer.get("decode_step_bytes"), peer.get("decode_tokens_per_s"),
                                                   copy)
    ratios = {}
    if llamarun and gpt_fast:
        ratios = {"decode": _div(llamarun["decode_tokens_per_s"], gpt_fast["decode_tokens_per_s"]),
                  "end_to_end": _div(llamarun["output_tokens_per_s"], gpt_fast["tokens_per_s"]),
                  "prompt": _div(llamarun["prompt_tokens_per_s"], gpt_fast["prompt_tokens_per_s"])}
    levels = []
    for lv in (sweep or {}).get("levels", []):
        row = {k: lv.get(k) for k in ("concurrency", "requests", "output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms",
                                       "tpot_p50_ms", "decode_tokens_per_s", "decode_bytes_per_step")}
        row["decode_bw_fraction"] = _fraction(lv.get("decode_bytes_per_step"), lv.get("decode_tokens_per_s"), copy)
        row["cut_short"] = bool(lv.get("cut_short_at_deadline"))
        levels.append(row)
    machine = first.get("machine", {})
    return {
        "date": (first.get("date") or dt.datetime.now().astimezone().isoformat(timespec="seconds"))[:10],
        "card": env.get("gpu") or machine.get("gpu") or env.get("nvidia_smi") or machine.get("cpu"),
        "nvidia_smi": env.get("nvidia_smi"),
        "versions": {"python": env.get("python"), "torch": env.get("torch") or machine.get("torch"),
                     "cuda": env.get("cuda"), "triton": env.get("triton") or machine.get("triton"),
                     "llamarun_commit": env.get("llamarun_commit"),
                     "gpt_fast_commit": (peer or {}).get("gpt_fast_commit")},
        "model": f"{first.get('model', '?')} shape, random {first.get('settings', {}).get('dtype', '?')} weights",
        "copy_gb_s": copy,
        "batch1": {"prompt_tokens": (batch1 or {}).get("settings", {}).get("prompt_tokens"),
                   "output_tokens": (batch1 or {}).get("settings", {}).get("output_tokens"),
                   "llamarun": llamarun, "gpt_fast": gpt_fast, "ratio_llamarun_to_gpt_fast": ratios},
        "sweep": {"prompt_tokens": (sweep or {}).get("settings", {}).get("prompt_tokens"),
                  "output_tokens": (sweep or {}).get("settings", {}).get("output_tokens"),
                  "levels": levels, "skipped": (sweep or {}).get("skipped_levels", [])},
        "stages": stages,
    }


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in [header, *rows]]


def format_summary(s: dict[str, Any]) -> str:
    """The plain-text tables gpu_decode.py prints last and the record's Markdown shows."""
    v, b = s["versions"], s["batch1"]
    ours, peer, ratio = b["llamarun"] or {}, b["gpt_fast"] or {}, b["ratio_llamarun_to_gpt_fast"]
    lines = [f"GPU decode benchmark, {s['card']}, {s['date']}: torch {v['torch']}, CUDA {v['cuda']}, "
             f"triton {v['triton']}; copy bandwidth {_f(s['copy_gb_s'], '{:.0f}')} GB/s (read + write)",
             f"{s['model']}; batch 1, {b['prompt_tokens']} prompt / {b['output_tokens']} output tokens", ""]
    rows = [["decode tok/s (1 / TPOT)", _f(ours.get("decode_tokens_per_s")), _f(peer.get("decode_tokens_per_s")),
             _f(ratio.get("decode"), "{:.2f}x")],
            ["end-to-end tok/s", _f(ours.get("output_tokens_per_s")), _f(peer.get("tokens_per_s")),
             _f(ratio.get("end_to_end"), "{:.2f}x")],
            ["prompt tok/s", _f(ours.get("prompt_tokens_per_s"), "{:.0f}"),
             _f(peer.get("prompt_tokens_per_s"), "{:.0f}"), _f(ratio.get("prompt"), "{:.2f}x")],
            ["decode bandwidth used", _pct(ours.get("decode_bw_fraction")), _pct(peer.get("decode_bw_fraction")),
             ""],
            ["TTFT p50 / p99 ms", f"{_f(ours.get('ttft_p50_ms'))} / {_f(ours.get('ttft_p99_ms'))}", "-", ""],
            ["start-up s (build / compile)", _f(ours.get("build_seconds")), _f(peer.get("compile_s")), ""]]
    lines += _table(["batch 1", "llamarun", "gpt-fast", "llamarun/gpt-fast"], rows)
    sw = s["sweep"]
    lines += ["", f"llamarun concurrency sweep: {sw['prompt_tokens']} prompt / {sw['output_tokens']} output tokens, "
                  "requests = concurrency"]
    rows = [[str(lv["concurrency"]), _f(lv["output_tokens_per_s"]), _f(lv["ttft_p50_ms"]), _f(lv["ttft_p99_ms"]),
             _f(lv["tpot_p50_ms"]), _pct(lv["decode_bw_fraction"]), "cut short" if lv["cut_short"] else ""]
            for lv in sw["levels"]]
    rows += [[str(x["concurrency"]), "-", "-", "-", "-", "-", f"skipped (~{x['estimated_seconds']} s estimated, "
              f"{x['seconds_left']} s left)"] for x in sw["skipped"]]
    lines += _table(["conc", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "decode bw", "note"], rows)
    stages = s.get("stages") or {}
    if stages:
        done = [f"{name} {'ok' if st.get('ok') else 'FAILED'}" + (f" {st['seconds']} s" if "seconds" in st else "")
                for name, st in stages.items()]
        lines += ["", "stages: " + ", ".join(done)]
    return "\n".join(lines)


def card_slug(card: str | None) -> str:
    """'NVIDIA H200' -> 'h200': a file-name-safe short name of the card."""
    name = re.sub(r"^nvidia\s+", "", (card or "unknown").strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"


def write(folder: Path, results: Path = RESULTS) -> Path:
    """Write gpu-decode-<card>-<date>.json and .md into `results`; returns the JSON path."""
    summary = summarize(folder)
    record = {**summary, "stage_outputs": {name: load(folder, name) for name in STAGE_FILES}}
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"gpu-decode-{card_slug(summary['card'])}-{summary['date']}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    md = [f"# GPU decode, {summary['card']}, {summary['date']}", "",
          "Written by benchmarks/write_record.py from one run of benchmarks/gpu_decode.py. Weights are random "
          "(N(0, 0.02), norms ones) in the model's real shape; prompts are random ids. Decode bandwidth used = "
          "(every weight but the embedding + K/V of the average context) x decode steps/s / copy bandwidth. "
          "gpt-fast: its own model.py and generate.py, decode compiled (reduce-overhead), temperature 0.8, "
          "top-k 200; llamarun: greedy.", "",
          f"Versions: {json.dumps(summary['versions'])}; nvidia-smi: {summary['nvidia_smi']}.", "",
          "```", format_summary(summary), "```", ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    return stem.with_suffix(".json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the --out folder of a gpu_decode.py run")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where records go")
    opts = ap.parse_args(argv)
    if not any((opts.folder / f"{name}.json").is_file() for name in STAGE_FILES):
        ap.error(f"{opts.folder} holds none of {', '.join(n + '.json' for n in STAGE_FILES)}")
    path = write(opts.folder, opts.results)
    print(path.with_suffix(".md").read_text())
    print(f"record written to {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
