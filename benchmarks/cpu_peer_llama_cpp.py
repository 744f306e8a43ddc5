"""llamarun beside llama.cpp (llama-cpp-python) on the same GGUF on CPU: quiet, then with a busy core.

    pip install -e '.[bench-cpu]'   # llama-cpp-python; builds from source where PyPI has no wheel (~15 min)
    python benchmarks/cpu_peer_llama_cpp.py [--rounds 3] [--new-tokens 128] [--gguf PATH] [--conditions quiet,busy]

Each measurement is a fresh process, and the two engines alternate within each round, so that whatever
else runs on the machine falls on both alike; the 1-minute load average is recorded beside each. The
busy condition keeps one process spinning for the whole of its rounds (another program on one of the
cores). Both engines decode greedily, a fixed number of tokens, from the same prompt text (each counts
its own tokens). Writes benchmarks/results/cpu-peer-llama-cpp-DATE.{json,md}, naming the CPU model.
llama-cpp-python is a benchmark extra (`bench-cpu`), never a runtime dependency of llamarun.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _llama_cpp(gguf: str, new_tokens: int, threads: int) -> dict:
    """One llama.cpp measurement in this process: load, prompt (one eval call), greedy decode."""
    from cpu_default_model import PROMPT
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - t0
    ids = llm.tokenize(PROMPT.encode())
    t = time.perf_counter()
    llm.eval(ids)
    prompt_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_tokens - 1):  # the first new token comes from the prompt's logits, as in llamarun's count
        llm.eval([llm.sample(temp=0.0)])
    decode_s = time.perf_counter() - t
    return {"engine": f"llama.cpp (llama-cpp-python, {threads} threads)", "load_s": load, "prompt_tokens": len(ids),
            "threads": threads, "prompt_tps": len(ids) / prompt_s, "decode_tps": (new_tokens - 1) / decode_s}


def _child(engine: str, gguf: str, new_tokens: int, threads: int | None) -> dict:
    """Run one measurement in a fresh process; llamarun chooses its threads as its CLI does."""
    if engine == "llamarun":
        call = (f"from llamarun.utils.threads import prepare; prepare({threads}); import cpu_default_model as b; "
                f"r = b._llamarun({gguf!r}, {new_tokens}, 1)")
    else:
        call = f"import cpu_peer_llama_cpp as b; r = b._llama_cpp({gguf!r}, {new_tokens}, {threads})"
    code = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); {call}; print('RESULT', json.dumps(r))"
    load_avg = os.getloadavg()[0]
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMARUN_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return {**json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[7:]),
            "load_avg": round(load_avg, 2)}


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and the cores this process may use, e.g. 'AMD EPYC, 2 cores (flags: avx2)'."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in flags]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores (flags: {' '.join(simd) or 'none of avx2/avx512'})"


def _spin() -> None:
    while True:
        pass


def measure(gguf: str, conditions: list[str], rounds: int, new_tokens: int, threads: int,
            child=_child) -> dict[str, dict[str, list[dict]]]:
    """{condition: {"llamarun": [runs], "llama.cpp": [runs]}}, alternating engines within every round."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for condition in conditions:
        spinner = multiprocessing.Process(target=_spin, daemon=True) if condition == "busy" else None
        if spinner:
            spinner.start()
        try:
            got = runs[condition] = {"llamarun": [], "llama.cpp": []}
            for _ in range(rounds):
                got["llamarun"].append(child("llamarun", gguf, new_tokens, None))  # its default threads
                got["llama.cpp"].append(child("llama_cpp", gguf, new_tokens, threads))
        finally:
            if spinner:
                spinner.kill()
    return runs


def summarize(runs: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """Medians per condition and engine, and llamarun's ratio to llama.cpp."""
    rows = []
    for condition, engines in runs.items():
        med = {engine: {key: statistics.median(r[key] for r in rs) for key in ("load_s", "prompt_tps", "decode_tps")}
               for engine, rs in engines.items()}
        rows.append({"condition": condition, **{f"{e}_{k}": v for e, m in med.items() for k, v in m.items()},
                     "ratio_decode": med["llamarun"]["decode_tps"] / med["llama.cpp"]["decode_tps"],
                     "ratio_prompt": med["llamarun"]["prompt_tps"] / med["llama.cpp"]["prompt_tps"],
                     "load_avg": [r["load_avg"] for rs in engines.values() for r in rs]})
    return rows


def write_record(runs: dict, new_tokens: int, rounds: int, folder: Path = RESULTS, tag: str = "") -> Path:
    """benchmarks/results/cpu-peer-llama-cpp-DATE[-TAG].{json,md}; returns the Markdown path."""
    date = dt.date.today().isoformat()
    record = {"date": date, "cpu": cpu_model(), "model": "the default model's GGUF (smollm2:135m, Q4_1)",
              "new_tokens": new_tokens, "rounds": rounds, "summary": summarize(runs), "runs": runs}
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"cpu-peer-llama-cpp-{date}{'-' + tag if tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# llamarun beside llama.cpp on CPU, {date}", "", f"CPU: {record['cpu']}. {new_tokens} new tokens, "
             f"greedy, median of {rounds} alternating rounds, fresh processes.", "",
             "| condition | llamarun prompt / decode tok/s | llama.cpp prompt / decode tok/s | decode ratio | "
             "prompt ratio | load avg |", "|---|---|---|---|---|---|"]
    for row in record["summary"]:
        lines.append(f"| {row['condition']} | {row['llamarun_prompt_tps']:.0f} / {row['llamarun_decode_tps']:.1f} | "
                     f"{row['llama.cpp_prompt_tps']:.0f} / {row['llama.cpp_decode_tps']:.1f} | "
                     f"{row['ratio_decode']:.2f}x | {row['ratio_prompt']:.2f}x | "
                     f"{min(row['load_avg']):.1f}-{max(row['load_avg']):.1f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", help="GGUF file (default: the default model's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--llama-cpp-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--conditions", default="quiet,busy")
    ap.add_argument("--tag", default="", help="suffix of the record's name, for a second record on one day")
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed: pip install -e '.[bench-cpu]'") from None
    if args.gguf:
        gguf = args.gguf
    else:
        from llamarun.store.default_model import ensure_default_model

        gguf = str(ensure_default_model())
    runs = measure(gguf, args.conditions.split(","), args.rounds, args.new_tokens, args.llama_cpp_threads)
    print(write_record(runs, args.new_tokens, args.rounds, tag=args.tag).read_text())


if __name__ == "__main__":
    main()
