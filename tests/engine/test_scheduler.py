"""Scheduler + BlockPool on fake token streams: a fake runner plays the model, no torch involved.

The fake runner sees each step only as a pickled copy (the plain data a worker process would get)
and checks it the way a model would fail if it were wrong: the tokens it is asked to run are the
request's own, and every cache slot it reads holds the K/V of exactly the token prefix it should
(a fake cache stores the prefix itself). Sampled tokens come from a script per request.
"""

from __future__ import annotations

import pickle
import random

import pytest

from llamarun.cache.block_pool import BlockPool
from llamarun.engine.request import Request, Status
from llamarun.engine.scheduler import Scheduler
from llamarun.engine.step import SchedulerOutput
from llamarun.sampling.params import SamplingParams


class FakeRunner:
    """Runs steps against a fake KV cache and answers each sampling sequence with its scripted token."""

    def __init__(self, block_size: int, max_batch_tokens: int, script: dict[str, list[int]]) -> None:
        self.bs, self.budget, self.script = block_size, max_batch_tokens, script
        self.tokens: dict[str, list[int]] = {}  # runner state: each request's history (prompt + sampled)
        self.prompt_len: dict[str, int] = {}
        self.kv: dict[int, tuple[int, ...]] = {}  # slot -> the token prefix whose K/V it holds
        self.steps: list[SchedulerOutput] = []

    def run(self, out: SchedulerOutput) -> dict[str, int]:
        step = pickle.loads(pickle.dumps(out))  # a worker only ever sees plain data
        assert step == out
        self.steps.append(step)
        assert step.num_tokens <= self.budget
        for rid in step.finished_ids:
            del self.tokens[rid]  # KeyError: told to drop state it never had
        for new in step.new_requests:
            assert new.request_id not in self.tokens, "state re-created: a preempted request would lose it"
            self.tokens[new.request_id] = list(new.token_ids)
            self.prompt_len[new.request_id] = len(new.token_ids)
        written: set[int] = set()
        sampled = {}
        for seq in step.seqs:
            tokens = self.tokens[seq.request_id]
            assert seq.token_ids == tokens[seq.start:seq.end]
            assert len(seq.block_table) == -(-seq.end // self.bs)
            others = {b for s in step.seqs if s is not seq for b in s.block_table}
            for p in range(seq.start):
                assert self.kv.get(self._slot(seq.block_table, p)) == tuple(tokens[:p + 1]), "stale cache read"
            for p in range(seq.start, seq.end):
                slot = self._slot(seq.block_table, p)
                assert slot not in written and slot // self.bs not in others, "two sequences write one block"
                written.add(slot)
                self.kv[slot] = tuple(tokens[:p + 1])
            assert seq.samples == (seq.end == len(tokens))
            if seq.samples:
                token = self.script[seq.request_id][len(tokens) - self.prompt_len[seq.request_id]]
                tokens.append(token)
                sampled[seq.request_id] = token
        return sampled

    def _slot(self, table: list[int], p: int) -> int:
        return table[p // self.bs] * self.bs + p % self.bs


def make(num_blocks: int = 64, block_size: int = 4, max_batch_tokens: int = 16, max_running: int = 8,
         script: dict[str, list[int]] | None = None, prefix_cache: bool = True) -> tuple[Scheduler, FakeRunner]:
    pool = BlockPool(num_blocks, block_size, prefix_cache)
    return Scheduler(pool, max_batch_tokens, max_running), FakeRunner(block_size, max_batch_tokens, script or {})


def request(rid: str, prompt: list[int], max_tokens: int | None = 6, stop_ids: tuple[int, ...] = (),
            context: int = 256) -> Request:
    return Request(rid, prompt, SamplingParams.greedy(max_tokens=max_tokens), frozenset(stop_ids), context)


def step(sched: Scheduler, runner: FakeRunner) -> SchedulerOutput:
    out = sched.schedule()
    sched.update(out, runner.run(out))
    return out


def drive(sched: Scheduler, runner: FakeRunner, reqs: list[Request], arrivals: list[int] | None = None
          ) -> dict[str, list[int]]:
    """Add request i at step arrivals[i], step until all finish; outputs by id. Checks nothing leaks."""
    arrivals = arrivals or [0] * len(reqs)
    pending = sorted(range(len(reqs)), key=lambda i: arrivals[i])
    n = 0
    while pending or sched.has_unfinished:
        while pending and arrivals[pending[0]] <= n:
            sched.add(reqs[pending.pop(0)])
        step(sched, runner)
        n += 1
        assert n < 5000
    assert sched.pool.num_free == sched.pool.num_blocks  # every block came back
    runner.run(sched.schedule())  # the last finished ids ride on the next step
    assert runner.tokens == {} and sched.requests == {}
    return {r.request_id: r.output_ids for r in reqs}


def scripted(reqs: list[Request], seed: int = 0, length: int = 64) -> dict[str, list[int]]:
    rng = random.Random(seed)
    return {r.request_id: [rng.randrange(1000, 2000) for _ in range(length)] for r in reqs}


def test_token_budget_chunks_a_long_prompt():
    req = request("a", list(range(20)), max_tokens=2)
    sched, runner = make(max_batch_tokens=8, script={"a": [7, 8]})
    sched.add(req)
    seqs = [step(sched, runner).seqs for _ in range(4)]
    assert [(s[0].start, s[0].num_tokens, s[0].samples) for s in seqs] == [
        (0, 8, False), (8, 8, False), (16, 4, True), (20, 1, True)]
    assert req.finished and req.output_ids == [7, 8] and req.finish_reason == "length"


def test_running_decodes_go_first_then_new_prompts_fill_the_budget():
    a, b = request("a", [1, 2, 3]), request("b", list(range(10, 30)))
    sched, runner = make(max_batch_tokens=8, script=scripted([a, b]))
    sched.add(a)
    step(sched, runner)  # a: prefill + first token
    sched.add(b)
    out = step(sched, runner)
    assert [(s.request_id, s.num_tokens) for s in out.seqs] == [("a", 1), ("b", 7)]
    assert [n.request_id for n in out.new_requests] == ["b"]
    out = step(sched, runner)
    assert [(s.request_id, s.num_tokens) for s in out.seqs] == [("a", 1), ("b", 7)]


def test_waiting_requests_are_admitted_in_arrival_order():
    reqs = [request(f"r{i}", [i] * 5, max_tokens=3) for i in range(4)]
    sched, runner = make(max_batch_tokens=64, max_running=2, script=scripted(reqs))
    for r in reqs:
        sched.add(r)
    admitted: list[str] = []
    while sched.has_unfinished:
        out = step(sched, runner)
        admitted += [n.request_id for n in out.new_requests]
        assert len(sched.running) <= 2
    assert admitted == ["r0", "r1", "r2", "r3"]
    assert reqs[2].first_scheduled >= reqs[1].first_token_at  # r2 waited for a free running place


def test_preemption_under_a_tiny_block_budget_resumes_identically():
    def reqs():
        return [request(f"r{i}", [i + 1] * 10, max_tokens=10, context=32) for i in range(3)]
    script = scripted(reqs())
    big_sched, big_runner = make(num_blocks=64, script=script)
    expected = drive(big_sched, big_runner, reqs())
    sched, runner = make(num_blocks=8, script=script)  # 32 slots; three requests want 60
    got = drive(sched, runner, reqs())
    assert got == expected == {rid: s[:10] for rid, s in script.items()}
    assert big_sched.num_preemptions == 0 and sched.num_preemptions > 0
    ever_preempted: set[str] = set()
    for o in runner.steps:  # the runner keeps a preempted request's state: never dropped, never re-created
        assert not {n.request_id for n in o.new_requests} & ever_preempted
        assert not set(o.finished_ids) & set(o.preempted_ids)
        ever_preempted |= set(o.preempted_ids)
    assert ever_preempted


def test_prefix_cache_hit_attaches_blocks_and_counts_cached_tokens():
    shared = list(range(100, 113))  # 13 tokens: three full blocks of 4
    a, b = request("a", shared + [1], max_tokens=2), request("b", shared + [2, 3], max_tokens=2)
    sched, runner = make(script=scripted([a, b]))
    drive(sched, runner, [a])
    a_blocks = runner.steps[0].seqs[0].block_table[:3]
    sched.add(b)
    out = sched.schedule()
    seq = out.seqs[0]
    assert seq.start == 12 and seq.token_ids == [112, 2, 3] and seq.block_table[:3] == a_blocks
    assert b.stats.cached_tokens == 12 and a.stats.cached_tokens == 0
    assert sched.pool.prefix_hits == 3
    sched.update(out, runner.run(out))
    while sched.has_unfinished:
        step(sched, runner)
    assert sched.pool.num_free == sched.pool.num_blocks


def test_prefix_cache_off_computes_everything():
    shared = list(range(100, 113))
    a, b = request("a", shared + [1], max_tokens=2), request("b", shared + [2], max_tokens=2)
    sched, runner = make(script=scripted([a, b]), prefix_cache=False)
    drive(sched, runner, [a, b], arrivals=[0, 10])
    assert b.stats.cached_tokens == 0 and sched.pool.prefix_hits == 0
    b_first = next(s for o in runner.steps for s in o.seqs if s.request_id == "b")
    assert b_first.start == 0 and b_first.num_tokens == len(b.prompt_ids)


def test_abort_frees_blocks_and_drops_runner_state_once():
    a, b = request("a", list(range(30)), max_tokens=50), request("b", [5, 6], max_tokens=50)
    sched, runner = make(max_batch_tokens=64, max_running=1, script=scripted([a, b]))
    sched.add(a)
    sched.add(b)
    step(sched, runner)
    assert sched.pool.num_used > 0 and b.status is Status.WAITING
    assert sched.abort("a").finish_reason == "abort"
    assert sched.abort("b").finish_reason == "abort"  # never scheduled: the runner never knew it
    assert sched.abort("a") is None
    assert sched.pool.num_used == 0 and not sched.has_unfinished
    out = sched.schedule()
    assert out.finished_ids == ["a"] and out.seqs == []
    runner.run(out)
    assert runner.tokens == {} and sched.schedule().finished_ids == []


def test_stop_ids_and_length_limits_finish_requests():
    script = {"s": [11, 12, 99, 13], "p": [21, 22, 23, 24], "m": [31, 32, 33], "c": list(range(40, 60))}
    reqs = [request("s", [1, 2], stop_ids=(99,)),
            Request("p", [1, 2], SamplingParams.greedy(stop_token_ids=(23,)), frozenset(), 256),
            request("m", [1, 2], max_tokens=3),
            request("c", [1, 2, 3], max_tokens=None, context=8)]
    sched, runner = make(script=script)
    got = drive(sched, runner, reqs)
    assert got == {"s": [11, 12], "p": [21, 22], "m": [31, 32, 33], "c": [40, 41, 42, 43, 44]}
    assert [r.finish_reason for r in reqs] == ["stop", "stop", "length", "length"]
    assert [r.stats.generated_tokens for r in reqs] == [2, 2, 3, 5]


def test_stop_token_is_reported_as_not_kept():
    sched, runner = make(script={"s": [11, 99]})
    sched.add(request("s", [1, 2], stop_ids=(99,)))
    out = sched.schedule()
    assert [(r.request_id, kept) for r, kept in sched.update(out, runner.run(out))] == [("s", True)]
    out = sched.schedule()
    assert [(r.request_id, kept) for r, kept in sched.update(out, runner.run(out))] == [("s", False)]


@pytest.mark.parametrize("seed", range(8))
def test_random_traffic_never_leaks_or_reads_stale_blocks(seed):
    rng = random.Random(seed)
    num_blocks, block_size = rng.choice([12, 16, 40]), rng.choice([2, 4])
    context = num_blocks * block_size  # as the engine insists: one request always fits the whole cache
    shared = [rng.randrange(500) for _ in range(rng.randrange(0, 20))]
    reqs = []
    for i in range(12):
        prompt = (shared if rng.random() < 0.5 else []) + [rng.randrange(500) for _ in range(rng.randrange(1, 25))]
        reqs.append(request(f"r{i}", prompt[:context - 1], max_tokens=rng.randrange(1, 12), context=context))
    script = scripted(reqs, seed)
    sched, runner = make(num_blocks, block_size, max_batch_tokens=rng.choice([5, 16, 64]),
                         max_running=rng.choice([2, 4, 8]), script=script)
    got = drive(sched, runner, reqs, arrivals=sorted(rng.randrange(30) for _ in reqs))
    for r in reqs:
        assert got[r.request_id] == script[r.request_id][:min(r.params.max_tokens, context - len(r.prompt_ids))]
