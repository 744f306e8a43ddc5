"""`--verbose` counts: the whole prompt, its cached part, and a prefill rate over the computed part."""

from __future__ import annotations

import re

from llamarun.cli.verbose import stats_lines
from llamarun.engine.stats import RequestStats


def field(lines: list[str], name: str) -> str:
    return next(re.sub(r"\s+", " ", line[len(name) + 1:]).strip() for line in lines if line.startswith(name + ":"))


def test_prompt_count_is_the_whole_prompt_and_the_cached_part_is_shown() -> None:
    stats = RequestStats(prompt_tokens=34, cached_tokens=32, generated_tokens=5, prompt_seconds=0.5,
                         decode_seconds=1.0)
    lines = stats_lines(stats, load_seconds=0.0, total_seconds=1.5, peak_bytes=2**20)
    assert field(lines, "prompt eval count") == "34 token(s)"
    assert field(lines, "prompt cached count") == "32 token(s)"
    assert field(lines, "prompt eval rate") == "4.00 tokens/s"  # 2 computed tokens in 0.5 s


def test_nothing_cached() -> None:
    stats = RequestStats(prompt_tokens=10, cached_tokens=0, generated_tokens=1, prompt_seconds=1.0)
    lines = stats_lines(stats, load_seconds=0.0, total_seconds=1.0, peak_bytes=0)
    assert field(lines, "prompt eval count") == "10 token(s)"
    assert field(lines, "prompt cached count") == "0 token(s)"
