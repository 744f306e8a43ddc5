"""One engine step as plain data: what the scheduler decided, and what the runner sampled.

Nothing here imports torch or points at a live object: a step holds ints, strings and the (frozen)
SamplingParams, so it pickles. The scheduler runs once and can send each step to tensor-parallel
worker processes; every runner (the CPU/torch one, a GPU one with CUDA graphs) reads the same types.

The protocol, one step at a time:
  1. the runner drops the state of `finished_ids` (finished or aborted requests it knew),
  2. creates sampler state for each of `new_requests` (a request id may come back as new after its
     old request finished: drop first, then create),
  3. runs `seqs` and samples a token after each sequence whose `samples` is set,
  4. answers `{request_id: SampledToken}`; the scheduler appends the tokens.
Preempted requests are never in `finished_ids`: the runner keeps their seeded generator and penalty
counts, so a request that is recomputed later samples exactly as if it had never been preempted.

Overlapped decoding (engine/llm_engine.py): a step may be planned before the previous one's tokens reach
the host. Its decode tokens are then PENDING, and the runner takes each one from the previous step's
samples on its device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llamarun.sampling.params import SamplingParams

PENDING = -1  # a decode token the previous step sampled and the host has not read yet


@dataclass(frozen=True)
class ScheduledSeq:
    """Run `token_ids` of one request at positions [start, start + len); K/V of [0, start) are cached.

    `block_table` lists the blocks holding the request's tokens [0, start + len), in order: this
    step's keys and values go into them too. `samples` says whether a token is sampled from the
    logits of the last token (the chunk reaches the end of prompt + output so far).
    """

    request_id: str
    token_ids: list[int]
    start: int
    block_table: list[int]
    samples: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def end(self) -> int:
        """Tokens the sequence attends over after this step (cached ones plus this step's)."""
        return self.start + len(self.token_ids)


@dataclass(frozen=True)
class NewRequest:
    """What the runner needs, once, to make a request's sampler state.

    `token_ids` is the request's history so far (prompt + output), which its penalty window counts.
    """

    request_id: str
    params: SamplingParams
    token_ids: list[int]


@dataclass(frozen=True)
class SchedulerOutput:
    """One step: the sequences to run (in scheduling order) and the runner state to make or drop.

    preempted_ids are the requests whose blocks were freed this step to make room; they wait to be
    recomputed and keep their runner state (the field is for logging and tests).
    """

    seqs: list[ScheduledSeq] = field(default_factory=list)
    new_requests: list[NewRequest] = field(default_factory=list)
    finished_ids: list[str] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)


@dataclass
class SampledToken:
    """The runner's answer for one sequence that sampled: the token, and log-probabilities when asked."""

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None  # (token id, logprob), most likely first
