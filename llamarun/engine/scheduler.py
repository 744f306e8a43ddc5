"""Continuous batching: which requests run this step, and how many of their tokens.

Each step has a token budget. Running requests go first, oldest first (a decode costs one token, a
prompt still being prefilled costs a chunk of what is left), then waiting requests in arrival order,
their prompt chunked to fit the budget. When KV blocks run out, the newest running request is
preempted: its blocks are freed and it goes back to the front of the queue, to be recomputed later
(its full blocks often survive in the prefix cache, so recomputing is cheap).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from llamarun.cache.block_pool import BlockPool, chain_hash
from llamarun.engine.request import Request, Status


@dataclass
class ScheduledSeq:
    """Run `num_tokens` tokens of `request`, starting at its `num_computed`."""

    request: Request
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the request's tokens, so a token is sampled after it."""
        return self.request.num_computed + self.num_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    seqs: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)


class Scheduler:
    """Owns the waiting queue, the running list and the KV blocks of every request."""

    def __init__(self, pool: BlockPool, max_batch_tokens: int = 512, max_running: int = 64) -> None:
        self.pool = pool
        self.max_batch_tokens = max_batch_tokens
        self.max_running = max_running
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in arrival order
        self.num_preemptions = 0

    # ----- requests in and out -----

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Stop a request wherever it is and free its blocks."""
        for queue in (self.waiting, self.running):
            for req in queue:
                if req.request_id == request_id:
                    queue.remove(req)
                    self._free(req)
                    req.finish("abort")
                    return req
        return None

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ----- one step -----

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_batch_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_uncomputed, budget)
            while not self._reserve(req, req.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim, out)
                if victim is req:
                    break
            if req.status is not Status.RUNNING:
                break
            out.seqs.append(ScheduledSeq(req, n))
            budget -= n
            i += 1
        # Admit waiting requests only when nobody had to be preempted: preemption means memory is tight.
        while self.waiting and budget > 0 and len(self.running) < self.max_running and not out.preempted:
            req = self.waiting[0]
            if not req.block_table:
                self._attach_cached_prefix(req)
            n = min(req.num_uncomputed, budget)
            if not self._reserve(req, req.num_computed + n):
                self._free(req)  # keep nothing pinned while it waits
                break
            self.waiting.popleft()
            req.status = Status.RUNNING
            if req.first_scheduled is None:
                req.first_scheduled = time.perf_counter()
            self.running.append(req)
            out.seqs.append(ScheduledSeq(req, n))
            budget -= n
        return out

    def update(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[tuple[Request, bool]]:
        """Advance the scheduled requests, append sampled tokens, free finished ones.

        Returns the requests that sampled, each with whether its token was kept (stop tokens are not).
        """
        touched = []
        for seq in out.seqs:
            req = seq.request
            if req.finished:  # aborted while the step ran
                continue
            req.num_computed += seq.num_tokens
            self._register_full_blocks(req)
            if req.request_id in sampled:
                touched.append((req, req.append(sampled[req.request_id])))
            if req.finished:
                self.running.remove(req)
                self._free(req)
        return touched

    # ----- blocks -----

    def _reserve(self, req: Request, num_tokens: int) -> bool:
        """Make the request's block table cover `num_tokens` tokens, if enough blocks are free."""
        bs = self.pool.block_size
        needed = -(-num_tokens // bs) - len(req.block_table)
        if needed > self.pool.num_free:
            return False
        for _ in range(max(needed, 0)):
            req.block_table.append(self.pool.allocate())
        return True

    def _attach_cached_prefix(self, req: Request) -> None:
        """Reuse cached blocks for the longest matching prefix (at least one token is always computed)."""
        bs = self.pool.block_size
        tokens = req.tokens
        hashes, parent = [], None
        for b in range((len(tokens) - 1) // bs):
            parent = chain_hash(parent, tokens[b * bs:(b + 1) * bs])
            hashes.append(parent)
        blocks = self.pool.lookup(hashes)
        req.block_table = blocks
        req.block_hashes = hashes[:len(blocks)]
        req.num_computed = len(blocks) * bs
        req.stats.cached_tokens = min(req.num_computed, len(req.prompt_ids))

    def _register_full_blocks(self, req: Request) -> None:
        bs = self.pool.block_size
        tokens = req.tokens
        for b in range(len(req.block_hashes), req.num_computed // bs):
            parent = req.block_hashes[-1] if req.block_hashes else None
            h = chain_hash(parent, tokens[b * bs:(b + 1) * bs])
            req.block_hashes.append(h)
            self.pool.register(req.block_table[b], h)

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self._free(req)
        req.status = Status.WAITING
        self.waiting.appendleft(req)
        out.preempted.append(req)
        self.num_preemptions += 1

    def _free(self, req: Request) -> None:
        self.pool.release(req.block_table)
        req.block_table = []
        req.block_hashes = []
        req.num_computed = 0
