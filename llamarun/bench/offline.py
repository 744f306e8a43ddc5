"""Offline throughput: drive the batched engine directly, keeping a fixed number of requests in flight.

Every request gets a synthetic prompt of exactly `prompt_tokens` random ids and greedy decoding with
no stop ids, so it makes exactly `output_tokens` tokens: each level does the same work, and tokens/s
compare across levels and machines. Prompts differ per request (and per level, through the seed), so
the prefix cache never turns a prefill into a lookup.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from llamarun.bench.report import LevelResult
from llamarun.errors import LlamarunError

MAX_IDLE_STEPS = 1000  # steps in a row with no output while requests remain: the engine is stuck
WARM_SEED = 1_000_000  # prompts of warm runs: far from the timed levels' seeds (seed + level index)


def synthetic_prompts(count: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """`count` prompts of `length` token ids drawn uniformly from the vocabulary, reproducible by seed."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(count)]


def check_settings(*, requests: int, concurrency: int, prompt_tokens: int, output_tokens: int,
                   context_length: int | None = None) -> None:
    """Reject settings that cannot run, as user errors."""
    for name, value in (("--requests", requests), ("--concurrency", concurrency),
                        ("--prompt-tokens", prompt_tokens), ("--output-tokens", output_tokens)):
        if value < 1:
            raise LlamarunError(f"{name} must be at least 1, got {value}", f"pass a positive {name}")
    if context_length is not None and prompt_tokens + output_tokens > context_length:
        raise LlamarunError(f"{prompt_tokens} prompt + {output_tokens} output tokens do not fit the context "
                            f"of {context_length} tokens",
                            "lower --prompt-tokens/--output-tokens or raise --ctx")


def warm_up(engine: Any, vocab_size: int, seed: int = 10_000, prompt_tokens: int = 16) -> None:
    """One short request first, so lazy initialisation (allocations, kernel choice) is not timed.

    On a GPU, pass the benchmark's prompt length: the first prefill of a new shape also picks kernels.
    """
    from llamarun.sampling.params import SamplingParams

    length = max(1, min(prompt_tokens, engine.config.context_length // 2))
    engine.add_request(synthetic_prompts(1, length, vocab_size, seed)[0], SamplingParams.greedy(max_tokens=2))
    _drain(engine, lambda out: None)


def run_offline(engine: Any, *, vocab_size: int, requests: int, concurrency: int, prompt_tokens: int,
                output_tokens: int, seed: int = 0, deadline: float | None = None) -> LevelResult:
    """Run `requests` requests through `engine` (an LLMEngine), `concurrency` at a time.

    A new request is added as soon as one finishes, so the engine always holds `concurrency`
    requests until the queue runs dry. TTFT is the engine's arrival -> first token (it includes
    waiting behind other requests' prefills, as a user would see it); TPOT is decode time over
    the tokens after the first. Past `deadline` (a `time.perf_counter()` value) the unfinished
    requests are aborted and the level is marked cut short: its figures cover what finished.
    """
    from llamarun.sampling.params import SamplingParams

    check_settings(requests=requests, concurrency=concurrency, prompt_tokens=prompt_tokens,
                   output_tokens=output_tokens, context_length=engine.config.context_length)
    params = SamplingParams.greedy(max_tokens=output_tokens)
    pending = deque(synthetic_prompts(requests, prompt_tokens, vocab_size, seed))
    before = engine.metrics()
    made: dict[str, int] = {}
    stats: dict[str, Any] = {}
    reasons: dict[str, int] = {}

    def add_one() -> None:
        rid = engine.add_request(pending.popleft(), params, stop_ids=())
        made[rid] = 0

    def on_output(out: Any) -> None:
        made[out.request_id] = made.get(out.request_id, 0) + len(out.new_tokens)
        if out.finished:
            stats[out.request_id] = out.stats
            reasons[out.finish_reason or "?"] = reasons.get(out.finish_reason or "?", 0) + 1
            if pending:
                add_one()

    def past_deadline() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(min(concurrency, requests)):
        add_one()
    cut_short = _drain(engine, on_output, stop=past_deadline)
    aborted = [rid for rid in made if rid not in stats and engine.abort(rid) is not None] if cut_short else []
    wall = time.perf_counter() - start
    # CPU seconds of this process (all threads) over wall seconds: on a shared machine, a figure well
    # below the thread count says other jobs took cores during the measurement.
    cpu_per_wall = (time.process_time() - cpu_start) / wall

    after = engine.metrics()
    ttft = [s.first_token_seconds for s in stats.values()]
    tpot = [s.decode_seconds / (made[rid] - 1) for rid, s in stats.items() if made[rid] > 1]
    # Tokens actually computed over the prefill's time (first scheduled -> first token), per request.
    prompt_tps = [s.prompt_tokens_per_second for s in stats.values() if s.prompt_seconds > 0]
    extra = {"finish_reasons": reasons, "preemptions": after.preemptions - before.preemptions,
             "prefix_hits": after.prefix_hits - before.prefix_hits, "cpu_per_wall": round(cpu_per_wall, 2)}
    energy = [s.energy_joules for s in stats.values() if s.energy_joules is not None]
    if energy:  # GPU runs: NVML energy charged to the requests, per output token and per request
        from llamarun.engine.energy import co2_grams, grid_intensity

        joules, tokens = sum(energy), max(sum(made.values()), 1)
        extra.update(energy_joules=round(joules, 3), joules_per_output_token=round(joules / tokens, 4),
                     co2_grams=round(co2_grams(joules), 5), grid_g_per_kwh=grid_intensity())
    if cut_short:
        extra.update(cut_short_at_deadline=True, aborted_requests=len(aborted),
                     never_started=requests - len(made))
    return LevelResult(
        mode="offline", concurrency=concurrency, requests=len(stats), prompt_tokens=len(stats) * prompt_tokens,
        output_tokens=sum(made.values()), wall_seconds=wall, ttft=ttft, tpot=tpot, extra=extra,
        prompt_tps=prompt_tps,
    )


def _drain(engine: Any, on_output: Any, stop: Any = None) -> bool:
    """Step until every request has finished, handing each output to `on_output`.

    Returns True when `stop()` said to stop before that (requests may remain in the engine).
    """
    idle = 0
    while engine.has_unfinished:
        if stop is not None and stop():
            return True
        outputs = engine.step()
        idle = 0 if outputs else idle + 1
        if idle > MAX_IDLE_STEPS:
            raise RuntimeError("the engine made no progress for 1000 steps with requests still queued")
        for out in outputs:
            on_output(out)
    return False


def estimate_seconds(last: LevelResult, requests: int) -> float:
    """Wall time of a level of `requests` requests if it runs no faster per request than `last` did.

    Pessimistic on purpose (batching usually raises throughput), so a level it admits fits its time.
    """
    if last.requests == 0:
        return math.inf
    return last.wall_seconds * requests / last.requests


def run_levels(engine: Any, *, vocab_size: int, levels: list[int], requests: list[int], prompt_tokens: int,
               output_tokens: int, seed: int = 0, deadline: float | None = None,
               on_level: Callable[[list[LevelResult], list[dict]], None] | None = None,
               warm_runs: int = 0) -> tuple[list[LevelResult], list[dict]]:
    """Run each concurrency level in turn; with a `deadline` (a `time.perf_counter()` value), skip a level
    whose estimate (from the level before) does not fit the time left, and cut short one that overruns.

    `warm_runs`: untimed runs of each level before its timed one. On a GPU the first run at a new batch
    shape compiles kernels for it (Triton specializes on sizes) and grows the allocator's pools: on an H200
    the first 256-concurrent run of 8B decoded 26% slower than the runs after it. The warm runs use other
    prompts (another seed), so the timed run finds none of them in the prefix cache.

    Returns the results and the skipped levels; `on_level(results, skipped)` is called after each level,
    so a caller can save what was measured so far.
    """
    if warm_runs < 0:
        raise ValueError(f"warm_runs must be 0 or more, not {warm_runs}")
    results: list[LevelResult] = []
    skipped: list[dict] = []
    for i, (concurrency, count) in enumerate(zip(levels, requests, strict=True)):
        if deadline is not None:
            left = deadline - time.perf_counter()
            estimate = (1 + warm_runs) * estimate_seconds(results[-1], count) if results else 0.0
            if left <= 0 or estimate > left:
                skipped.append({"concurrency": concurrency, "requests": count,
                                "estimated_seconds": round(estimate, 1), "seconds_left": round(left, 1)})
                print(f"concurrency {concurrency}: skipped, an estimated {estimate:.0f} s does not fit the "
                      f"{max(left, 0):.0f} s left", flush=True)
                continue
        warm = [run_offline(engine, vocab_size=vocab_size, requests=count, concurrency=concurrency,
                            prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                            seed=WARM_SEED + 1000 * i + w, deadline=deadline) for w in range(warm_runs)]
        if warm and deadline is not None:
            # The warm run's own time says what the timed one needs: skip the level, not record it cut to nothing.
            left = deadline - time.perf_counter()
            overran = warm[-1].extra.get("cut_short_at_deadline", False)
            if overran or warm[-1].wall_seconds > left:
                skipped.append({"concurrency": concurrency, "requests": count,
                                "estimated_seconds": round(warm[-1].wall_seconds, 1),
                                "seconds_left": round(max(left, 0.0), 1), "reason": "its warm run left no time"})
                print(f"concurrency {concurrency}: skipped, its warm run left no time for a timed one", flush=True)
                continue
        r = run_offline(engine, vocab_size=vocab_size, requests=count, concurrency=concurrency,
                        prompt_tokens=prompt_tokens, output_tokens=output_tokens, seed=seed + i, deadline=deadline)
        results.append(r)
        note = " (cut short at the time budget)" if r.extra.get("cut_short_at_deadline") else ""
        print(f"concurrency {concurrency}: {r.output_tps:.1f} output tokens/s over {r.wall_seconds:.1f} s{note}",
              flush=True)
        if on_level is not None:
            on_level(results, skipped)
    return results, skipped
