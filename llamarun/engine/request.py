"""A request as the engine sees it: token ids in, token ids out, and where it stands.

Plain Python, no torch: the scheduler owns these objects; the runner's per-request state (seeded
generator, penalty counts) lives in the runner and is created from the step's plain data.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from llamarun.engine.stats import RequestStats
from llamarun.sampling.params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    """One generation. `tokens` is prompt + output; `num_computed` of them have K/V in the cache."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stop_ids: frozenset[int]
    max_total_tokens: int  # the context length: prompt + output never exceed it
    group: str | None = None  # the client request it was born from: admission is fair between groups
    arrival: float = field(default_factory=time.perf_counter)
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of the full blocks so far
    finish_reason: str | None = None
    stats: RequestStats = field(default_factory=RequestStats)
    first_scheduled: float | None = None
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.stats.prompt_tokens = len(self.prompt_ids)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """tokens[start:end] without building the whole prompt + output list."""
        p = len(self.prompt_ids)
        if end <= p:
            return self.prompt_ids[start:end]
        if start >= p:
            return self.output_ids[start - p:end - p]
        return self.prompt_ids[start:] + self.output_ids[: end - p]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_uncomputed(self) -> int:
        """Tokens still to run through the model before the next sample (the whole prompt at first)."""
        return self.num_tokens - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def append(self, token_id: int) -> bool:
        """Record a sampled token and decide whether the request is done; False for a stop token (not kept)."""
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        if token_id in self.stop_ids or token_id in self.params.stop_token_ids:
            self.finish("stop")
            return False
        self.output_ids.append(token_id)
        self.stats.generated_tokens += 1
        limit = self.params.max_tokens
        if (limit is not None and len(self.output_ids) >= limit) or self.num_tokens >= self.max_total_tokens:
            self.finish("length")
        return True

    def finish(self, reason: str) -> None:
        if self.finished:
            return
        now = time.perf_counter()
        self.status = Status.FINISHED
        self.finish_reason = reason
        s = self.stats
        s.done_reason = reason
        started = self.first_scheduled or now
        first = self.first_token_at or now
        s.queue_seconds = started - self.arrival
        s.prompt_seconds = max(first - started, 0.0)
        s.first_token_seconds = first - self.arrival
        s.decode_seconds = max(now - first, 0.0)
