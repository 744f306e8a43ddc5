"""Offline throughput: drive the batched engine directly, keeping a fixed number of requests in flight.

Every request gets a synthetic prompt of exactly `prompt_tokens` random ids and greedy decoding with
no stop ids, so it makes exactly `output_tokens` tokens: each level does the same work, and tokens/s
compare across levels and machines. Prompts differ per request (and per level, through the seed), so
the prefix cache never turns a prefill into a lookup.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from llamarun.bench.report import LevelResult
from llamarun.errors import LlamarunError

MAX_IDLE_STEPS = 1000  # steps in a row with no output while requests remain: the engine is stuck


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


def warm_up(engine: Any, vocab_size: int, seed: int = 10_000) -> None:
    """One short request first, so lazy initialisation (allocations, kernel choice) is not timed."""
    from llamarun.sampling.params import SamplingParams

    length = min(16, engine.config.context_length // 2)
    engine.add_request(synthetic_prompts(1, length, vocab_size, seed)[0], SamplingParams.greedy(max_tokens=2))
    _drain(engine, lambda out: None)


def run_offline(engine: Any, *, vocab_size: int, requests: int, concurrency: int, prompt_tokens: int,
                output_tokens: int, seed: int = 0) -> LevelResult:
    """Run `requests` requests through `engine` (an LLMEngine), `concurrency` at a time.

    A new request is added as soon as one finishes, so the engine always holds `concurrency`
    requests until the queue runs dry. TTFT is the engine's arrival -> first token (it includes
    waiting behind other requests' prefills, as a user would see it); TPOT is decode time over
    the tokens after the first.
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

    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(min(concurrency, requests)):
        add_one()
    _drain(engine, on_output)
    wall = time.perf_counter() - start
    # CPU seconds of this process (all threads) over wall seconds: on a shared machine, a figure well
    # below the thread count says other jobs took cores during the measurement.
    cpu_per_wall = (time.process_time() - cpu_start) / wall

    after = engine.metrics()
    ttft = [s.first_token_seconds for s in stats.values()]
    tpot = [s.decode_seconds / (made[rid] - 1) for rid, s in stats.items() if made[rid] > 1]
    return LevelResult(
        mode="offline", concurrency=concurrency, requests=len(stats), prompt_tokens=requests * prompt_tokens,
        output_tokens=sum(made.values()), wall_seconds=wall, ttft=ttft, tpot=tpot,
        extra={"finish_reasons": reasons, "preemptions": after.preemptions - before.preemptions,
               "prefix_hits": after.prefix_hits - before.prefix_hits, "cpu_per_wall": round(cpu_per_wall, 2)},
    )


def _drain(engine: Any, on_output: Any) -> None:
    """Step until every request has finished, handing each output to `on_output`."""
    idle = 0
    while engine.has_unfinished:
        outputs = engine.step()
        idle = 0 if outputs else idle + 1
        if idle > MAX_IDLE_STEPS:
            raise RuntimeError("the engine made no progress for 1000 steps with requests still queued")
        for out in outputs:
            on_output(out)
