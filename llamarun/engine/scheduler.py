"""Continuous batching: which requests run this step, and how many of their tokens.

Each step has a token budget. Running requests go first, oldest first (a decode costs one token, a
prompt still being prefilled costs a chunk of what is left), then waiting requests, fairly between
client groups and in arrival order within one (engine/fair_queue.py), their prompt chunked to fit the
budget. When KV blocks run out, the newest running request is preempted: its blocks are freed and it
goes back to the front of the queue, to be recomputed later (its full blocks often survive in the
prefix cache, so recomputing is cheap).
"""

from __future__ import annotations

import time

from llamarun.cache.block_pool import BlockPool, chain_hash
from llamarun.engine.fair_queue import FairQueue
from llamarun.engine.request import Request, Status
from llamarun.engine.step import PENDING, NewRequest, ScheduledSeq, SchedulerOutput

__all__ = ["ScheduledSeq", "Scheduler", "SchedulerOutput"]


class Scheduler:
    """Owns the waiting queue, the running list and the KV blocks of every request.

    It also tracks which requests the runner holds state for, so each step tells the runner which
    states to create (`new_requests`) and which to drop (`finished_ids`).
    """

    def __init__(self, pool: BlockPool, max_batch_tokens: int = 512, max_running: int = 64) -> None:
        self.pool = pool
        self.max_batch_tokens = max_batch_tokens
        self.max_running = max_running
        self.waiting = FairQueue()
        self.running: list[Request] = []  # in arrival order
        self.requests: dict[str, Request] = {}  # every unfinished request, waiting or running
        self.num_preemptions = 0
        self._runner_knows: set[str] = set()  # ids whose sampler state the runner holds
        self._to_drop: list[str] = []  # finished since the last step; sent with the next one

    # ----- requests in and out -----

    def add(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Stop a request wherever it is and free its blocks; None if it is not here (any more)."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        (self.running if req.status is Status.RUNNING else self.waiting).remove(req)
        self._free(req)
        req.finish("abort")
        self._forget(req)
        return req

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ----- one step -----

    def schedule(self) -> SchedulerOutput:
        """This step's sequences: running requests first (oldest first), then waiting ones, fair between groups."""
        seqs: list[ScheduledSeq] = []
        new: list[NewRequest] = []
        preempted: list[str] = []
        budget = self.max_batch_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_uncomputed, budget)
            while not self._reserve(req, req.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            if req.status is not Status.RUNNING:
                break
            seqs.append(self._scheduled(req, n, new))
            budget -= n
            i += 1
        # Admit waiting requests only when nobody had to be preempted: preemption means memory is tight.
        while self.waiting and budget > 0 and len(self.running) < self.max_running and not preempted:
            req = self.waiting.peek()
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
            seqs.append(self._scheduled(req, n, new))
            budget -= n
        dropped, self._to_drop = self._to_drop, []
        return SchedulerOutput(seqs, new, dropped, preempted)

    def schedule_ahead(self, prev: SchedulerOutput) -> SchedulerOutput | None:
        """The step after `prev`, planned while `prev`'s tokens are still on the device; None when it cannot be.

        Only a steady decode qualifies: nobody waiting, and every running request sampled in `prev`, so each
        will hold exactly one more token, whose value the runner takes on the device (PENDING). A request
        that `prev`'s token will finish by length is left out. One that a stop token finishes runs this step
        for nothing, and the engine drops its result. Nothing is preempted here: when blocks run short, the
        engine reads `prev` first and schedules as usual.
        """
        if self.waiting or not self.running or len(self.running) > self.max_batch_tokens:
            return None
        in_prev = {seq.request_id: seq for seq in prev.seqs}
        seqs = []
        for req in self.running:
            seq = in_prev.get(req.request_id)
            if seq is None or not seq.samples:
                return None
            limit = req.params.max_tokens
            if (limit is not None and len(req.output_ids) + 1 >= limit) or req.num_tokens + 1 >= req.max_total_tokens:
                continue  # prev's token is its last
            if not self._reserve(req, seq.end + 1):  # blocks reserved for earlier requests stay theirs
                return None
            blocks = req.block_table[: -(-(seq.end + 1) // self.pool.block_size)]
            seqs.append(ScheduledSeq(req.request_id, [PENDING], seq.end, blocks, True))
        if not seqs:
            return None
        dropped, self._to_drop = self._to_drop, []
        return SchedulerOutput(seqs, [], dropped, [])

    def update(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[tuple[Request, bool]]:
        """Advance the scheduled requests, append sampled tokens, free finished ones.

        Returns the requests that sampled, each with whether its token was kept (stop tokens are not).
        """
        touched = []
        for seq in out.seqs:
            req = self.requests.get(seq.request_id)
            if req is None:  # aborted while the step ran
                continue
            req.num_computed += len(seq.token_ids)
            self._register_full_blocks(req)
            token = sampled.get(req.request_id)
            if token is not None:
                touched.append((req, req.append(token)))
            if req.finished:
                self.running.remove(req)
                self._free(req)
                self._forget(req)
        return touched

    def _scheduled(self, req: Request, n: int, new: list[NewRequest]) -> ScheduledSeq:
        """The plain-data view of running `n` tokens of `req`; a request the runner has not seen is new."""
        if req.request_id not in self._runner_knows:
            self._runner_knows.add(req.request_id)
            new.append(NewRequest(req.request_id, req.params, req.tokens))
        start = req.num_computed
        end = start + n
        blocks = req.block_table[: -(-end // self.pool.block_size)]  # a copy: the table grows later
        return ScheduledSeq(req.request_id, req.token_slice(start, end), start, blocks, end == req.num_tokens)

    def _forget(self, req: Request) -> None:
        """A finished request leaves the scheduler; the runner drops its state with the next step."""
        del self.requests[req.request_id]
        if req.request_id in self._runner_knows:
            self._runner_knows.remove(req.request_id)
            self._to_drop.append(req.request_id)

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
        for b in range(len(req.block_hashes), req.num_computed // bs):
            parent = req.block_hashes[-1] if req.block_hashes else None
            h = chain_hash(parent, req.token_slice(b * bs, (b + 1) * bs))
            req.block_hashes.append(h)
            self.pool.register(req.block_table[b], h)

    def _preempt(self, req: Request) -> None:
        """Free a running request's blocks and queue it first, to be recomputed (its runner state stays)."""
        self.running.remove(req)
        self._free(req)
        req.status = Status.WAITING
        self.waiting.appendleft(req)
        self.num_preemptions += 1

    def _free(self, req: Request) -> None:
        self.pool.release(req.block_table)
        req.block_table = []
        req.block_hashes = []
        req.num_computed = 0
