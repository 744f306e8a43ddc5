"""What the safety guards cost on a CPU or a GPU: added latency per request, and tokens/s lost at 8 concurrent requests.

Two real servers run side by side in this process (uvicorn threads, llamarun's own ModelManager and engine),
both over the same main model: one without guards, one with the guards `serve` would build for
`--guard GUARD --guard-mode warn --code-shield warn --language-policy warn`, except that Code Shield keeps to
its regex rules (no semgrep), and the language policy is left out where lingua is not installed (the device
machine: its wheel is too large to carry; the policy runs on the host CPU whatever the model's device). The
guard model is leased from the same manager as the main model, on the same device (by default the main model
itself stands in as the Llama Guard); in warn mode nothing is blocked, so both servers generate the same
replies and the guards' whole cost shows: an input check before the first token and an output check every
`stream_every` tokens and at the end.

Runs alternate between the two servers, round by round, so a burst of load from other jobs on a shared
machine hits both sides alike. Writes guard-cost-<device>-<date>.json and .md into --out (default
benchmarks/results/).

    python benchmarks/guard_cost.py [--rounds 5] [--latency-requests 4] [--max-tokens 48]
    # on a GPU, with folders written by benchmarks/device_model.py:
    python benchmarks/guard_cost.py --device cuda --model /tmp/models/8b --guard-model /tmp/models/1b --out $OUT
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2:135m"
CONCURRENCY = 8
QUESTIONS = ["Name three rivers in Europe.", "How does a bicycle stay upright?", "Write a haiku about rain.",
             "What is a prime number?", "Give two tips for sleeping well.", "Why is the sky blue?",
             "Explain what a hash table is.", "Suggest a name for a grey cat."]


def has_lingua() -> bool:
    try:
        import lingua  # noqa: F401
    except ImportError:
        return False
    return True


def code_shield_starts() -> bool:
    """Whether codeshield imports here (the device machine has no semgrep, which it may need at import)."""
    from llamarun.errors import LlamarunError
    from llamarun.safety.code_shield import CodeShield

    try:
        CodeShield(semgrep=False)
    except LlamarunError as err:
        print(f"guard_cost: Code Shield is left out: {err}")
        return False
    return True


def build_apps(model: str, guard_model: str, device: str, code_shield_ok: bool) -> tuple[Any, Any]:
    """(unguarded app, guarded app), each over its own ModelManager of `model` on `device`."""
    from llamarun.safety.code_shield import CodeShield
    from llamarun.safety.factory import BUILDERS, build_pipeline
    from llamarun.safety.settings import GuardSettings
    from llamarun.safety.verdict import GuardMode
    from llamarun.sampling.grammar_spec import GrammarSpec
    from llamarun.server import ModelManager, create_app
    from llamarun.server.model_manager import FOREVER, default_loader

    def app(guarded: bool) -> Any:
        # Folders (benchmarks/device_model.py) are named by path, which a server allows only under --models-dir.
        folders = sorted({str(Path(m).resolve().parent) for m in (model, guard_model) if Path(m).exists()})
        manager = ModelManager(default_loader(device=device), keep_alive=FOREVER, models_dirs=folders)
        guards = None
        if guarded:
            language = GuardMode.WARN if has_lingua() else GuardMode.OFF
            code_shield = GuardMode.WARN if code_shield_ok else GuardMode.OFF
            settings = GuardSettings(llama_guard=guard_model, llama_guard_mode=GuardMode.WARN,
                                     code_shield=code_shield, language_policy=language)
            regex_only = (lambda s, ctx: CodeShield(semgrep=False), BUILDERS["code_shield"][1], "--code-shield")
            guards = build_pipeline(settings, source=manager, keep_alive=FOREVER, timeout=600,
                                    builders=dict(BUILDERS, code_shield=regex_only))
            # The stand-in is no guard model: left free it writes up to 48 tokens of noise per check. A real
            # Llama Guard answers in ~3 tokens ("\n\nsafe"), so the stand-in is made to write just that.
            for slot in guards.slots:
                if slot.guard.name == "llama_guard":
                    slot.guard.grammar = GrammarSpec("choice", ["\n\nsafe"])
        return create_app(manager, preload=model, preload_keep_alive=FOREVER, guards=guards)

    return app(False), app(True)


async def one_chat(client: Any, url: str, model: str, question: str, max_tokens: int
                   ) -> tuple[float, int, dict | None]:
    """(seconds, completion tokens, llamarun_guard) of one whole OpenAI chat completion."""
    start = time.perf_counter()
    r = await client.post(f"{url}/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
        "temperature": 0})
    if r.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:500]}")
    body = r.json()
    return time.perf_counter() - start, body["usage"]["completion_tokens"], body.get("llamarun_guard")


async def latency_round(client: Any, url: str, model: str, n: int, max_tokens: int) -> list[float]:
    return [(await one_chat(client, url, model, QUESTIONS[i % len(QUESTIONS)], max_tokens))[0] for i in range(n)]


async def concurrent_round(client: Any, url: str, model: str, max_tokens: int) -> tuple[float, int, int]:
    """(aggregate completion tokens/s, tokens, guarded replies) of CONCURRENCY requests at once."""
    start = time.perf_counter()
    out = await asyncio.gather(*(one_chat(client, url, model, q, max_tokens) for q in QUESTIONS[:CONCURRENCY]))
    wall = time.perf_counter() - start
    tokens = sum(t for _, t, _ in out)
    return tokens / wall, tokens, sum(1 for *_, g in out if g is not None)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


async def measure(urls: dict[str, str], model: str, rounds: int, latency_requests: int, max_tokens: int) -> dict:
    import httpx

    lat: dict[str, list[float]] = {k: [] for k in urls}
    tps: dict[str, list[float]] = {k: [] for k in urls}
    tokens: dict[str, list[int]] = {k: [] for k in urls}
    annotated = 0
    async with httpx.AsyncClient(timeout=600) as client:
        for url in urls.values():  # warm-up: loads, first-call costs (lingua's models, the guard's spec)
            await one_chat(client, url, model, QUESTIONS[0], 8)
            await concurrent_round(client, url, model, 8)
        for rnd in range(rounds):
            order = list(urls) if rnd % 2 == 0 else list(reversed(urls))
            for name in order:
                lat[name] += await latency_round(client, urls[name], model, latency_requests, max_tokens)
                rate, n, guarded = await concurrent_round(client, urls[name], model, max_tokens)
                tps[name].append(round(rate, 2))
                tokens[name].append(n)
                annotated += guarded
                print(f"round {rnd + 1} {name}: latency median {statistics.median(lat[name]):.2f} s, "
                      f"{rate:.1f} tok/s at {CONCURRENCY}", flush=True)
    med = {k: statistics.median(v) for k, v in lat.items()}
    best = {k: max(v) for k, v in tps.items()}
    mid = {k: statistics.median(v) for k, v in tps.items()}
    return {"latency_seconds": {k: [round(x, 3) for x in v] for k, v in lat.items()},
            "latency_median_seconds": {k: round(v, 3) for k, v in med.items()},
            "added_latency_seconds": round(med["guarded"] - med["unguarded"], 3),
            "added_latency_percent": round(100 * (med["guarded"] / med["unguarded"] - 1), 1),
            "concurrent_tokens_per_s": tps, "concurrent_completion_tokens": tokens,
            "concurrent_tps_median": {k: round(v, 2) for k, v in mid.items()},
            "concurrent_tps_best": best,
            "tps_lost_percent_median": round(100 * (1 - mid["guarded"] / mid["unguarded"]), 1),
            "tps_lost_percent_best": round(100 * (1 - best["guarded"] / best["unguarded"]), 1),
            "guarded_replies_with_warnings": annotated}


def markdown(rec: dict) -> str:
    r = rec["results"]
    where = "CPU" if rec["device"] == "cpu" else rec["device_name"]
    loaded = rec["load_before"] >= 0.75 * rec["cores"]
    load_line = (f"**Indicative only: the machine was loaded.** `uptime` before: `{rec['uptime_before']}`; after: "
                 f"`{rec['uptime_after']}` ({rec['cores']} cores, shared with other jobs)." if loaded else
                 f"`uptime` before: `{rec['uptime_before']}`; after: `{rec['uptime_after']}` ({rec['cores']} cores).")
    return "\n".join([
        f"# Cost of the safety guards on {where}, {rec['date'][:10]}", "",
        f"Written by `benchmarks/guard_cost.py`. {load_line}", "",
        (f"Main model {rec['model']} on {where}, whole OpenAI chat completions, greedy, max_tokens "
         f"{rec['max_tokens']}. Guarded server: {rec['guards']}, all in warn mode (nothing blocked, so both "
         f"servers generate the same text); Llama Guard stand-in: {rec['llama_guard_stand_in']}, leased from "
         f"the same manager on the same device; output checks every {rec['stream_every']} tokens. "
         f"{rec['rounds']} rounds, guarded and unguarded alternating. Code Shield: {rec['code_shield']}. "
         f"Language policy: {rec['language_policy']}."), "",
        "| | unguarded | guarded | cost |", "|---|---|---|---|",
        (f"| latency, one request at a time (median of {len(r['latency_seconds']['guarded'])}) | "
         f"{r['latency_median_seconds']['unguarded']} s | {r['latency_median_seconds']['guarded']} s | "
         f"+{r['added_latency_seconds']} s ({r['added_latency_percent']:+}%) |"),
        (f"| completion tokens/s at {CONCURRENCY} concurrent (median of rounds) | "
         f"{r['concurrent_tps_median']['unguarded']} | {r['concurrent_tps_median']['guarded']} | "
         f"{r['tps_lost_percent_median']}% lost |"),
        (f"| same, best round | {r['concurrent_tps_best']['unguarded']} | {r['concurrent_tps_best']['guarded']} "
         f"| {r['tps_lost_percent_best']}% lost |"), "",
        "Per-round figures are in the JSON beside this file.", ""])


def main() -> int:
    import os

    from llamarun.bench.serving import serve_in_thread
    from llamarun.safety.settings import DEFAULT_STREAM_EVERY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency-requests", type=int, default=4, help="single requests per server per round")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=MODEL, help="the main model (a store name or a path)")
    ap.add_argument("--guard-model", help="the model standing in as Llama Guard (default: the main model)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the .json and .md records")
    args = ap.parse_args()
    guard_model = args.guard_model or args.model

    before, load_before = uptime(), os.getloadavg()[0]
    code_shield_ok = code_shield_starts()
    unguarded, guarded = build_apps(args.model, guard_model, args.device, code_shield_ok)
    with ExitStack() as stack:
        urls = {"unguarded": stack.enter_context(serve_in_thread(unguarded, startup_timeout=300)),
                "guarded": stack.enter_context(serve_in_thread(guarded, startup_timeout=300))}
        results = asyncio.run(measure(urls, args.model, args.rounds, args.latency_requests, args.max_tokens))
        guards = ", ".join(f"{g['guard']} ({g['mode']})" for g in guarded.state.guards.describe())
    date = dt.datetime.now(dt.UTC)
    device_name = "cpu"
    if args.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(torch.device(args.device))
    stand_in = (f"{guard_model} itself" if guard_model == args.model else guard_model)
    record = {"benchmark": "guard_cost", "date": date.isoformat(timespec="seconds"), "device": args.device,
              "device_name": device_name, "cores": os.cpu_count(), "load_before": load_before,
              "uptime_before": before, "uptime_after": uptime(),
              "model": args.model, "guards": guards,
              "code_shield": "regex rules only (semgrep off)" if code_shield_ok else "off: not startable here",
              "language_policy": "warn (lingua)" if has_lingua() else "off: lingua is not installed here",
              "llama_guard_stand_in": f"{stand_in} (no real Llama Guard weights can be downloaded here)",
              "stream_every": DEFAULT_STREAM_EVERY, "rounds": args.rounds, "max_tokens": args.max_tokens,
              "concurrency": CONCURRENCY, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    kind = "cpu" if args.device == "cpu" else "gpu"
    stem = args.out / f"guard-cost-{kind}-{date.date().isoformat()}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
