"""Fair admission between clients (issue 10): a later small request does not wait for a big one's tail.

(Over HTTP one request holds at most `serve --max-generations`, 64 by default, of the engine's slots.)

Requests born from one client request share a group; the scheduler admits waiting groups round-robin
(engine/fair_queue.py), arrival order within a group. Requests without a group are each their own, which
is first come, first served.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the scheduler tests' fake runner and helpers
from test_scheduler import make, request, scripted, step

from llamarun.engine.request import Request


def test_a_later_request_is_served_before_a_100_prompt_batch_finishes() -> None:
    batch = [request(f"big-{i}", [i % 50 + 1] * 4, max_tokens=8) for i in range(100)]
    late = request("late", [99] * 4, max_tokens=8)
    sched, runner = make(num_blocks=1024, block_size=4, max_batch_tokens=512, max_running=64,
                         script=scripted([*batch, late]))
    for r in batch:
        sched.add(r)
    step(sched, runner)  # the batch's first 64 are admitted; 36 wait
    sched.add(late)
    admitted_at: dict[str, int] = {}
    finished_at: dict[str, int] = {}
    n = 1
    while sched.has_unfinished:
        out = step(sched, runner)
        n += 1
        for new in out.new_requests:
            admitted_at[new.request_id] = n
        for r in [*batch, late]:
            if r.finished and r.request_id not in finished_at:
                finished_at[r.request_id] = n
        assert n < 500
    last_big = max(finished_at[r.request_id] for r in batch)
    assert admitted_at["late"] < last_big  # it did not wait for all 100: it runs beside the batch's rest
    assert finished_at["late"] <= last_big
    first_wave_done = min(finished_at[r.request_id] for r in batch)
    assert admitted_at["late"] == first_wave_done + 1  # admitted at the first free slots, with the batch's rest
    # First come, first served: every generation that arrived before it was admitted no later than it.
    assert all(admitted_at.get(r.request_id, 1) <= admitted_at["late"] for r in batch)


def grouped(rid: str, group: str, max_tokens: int) -> Request:
    req = request(rid, [hash(rid) % 50 + 1] * 4, max_tokens=max_tokens)
    req.group = group
    return req


def admissions(sched, runner, late: list[Request], at_step: int) -> list[str]:
    """Step to the end, adding `late` before step `at_step`; the request ids in the order they were admitted."""
    order: list[str] = []
    n = 0
    while sched.has_unfinished or n <= at_step:
        if n == at_step:
            for r in late:
                sched.add(r)
        order += [new.request_id for new in step(sched, runner).new_requests]
        n += 1
        assert n < 2000
    return order


def test_a_small_request_is_admitted_before_the_tail_of_a_big_one() -> None:
    # 40 generations of one client request on 8 slots; their lengths differ, so slots free one or two at a time.
    big = [grouped(f"big-{i}", "http-1", max_tokens=3 + i % 5) for i in range(40)]
    late = grouped("late", "http-2", max_tokens=3)
    sched, runner = make(num_blocks=1024, block_size=4, max_batch_tokens=256, max_running=8,
                         script=scripted([*big, late]))
    for r in big:
        sched.add(r)
    order = admissions(sched, runner, [late], at_step=1)
    assert order[:8] == [f"big-{i}" for i in range(8)]  # the first wave, before the small request came
    assert order.index("late") <= 9  # the first or second slot that frees up is its
    assert len(order) - 1 - order.index("late") >= 30  # ...ahead of 30+ generations of the big request
    assert [r for r in order if r != "late"] == [r.request_id for r in big]  # the big one keeps its own order
    # Without groups the same requests are first come, first served: the small one waits for the whole tail.
    big = [request(f"big-{i}", [i % 50 + 1] * 4, max_tokens=3 + i % 5) for i in range(40)]
    late = request("late", [99] * 4, max_tokens=3)
    sched, runner = make(num_blocks=1024, block_size=4, max_batch_tokens=256, max_running=8,
                         script=scripted([*big, late]))
    for r in big:
        sched.add(r)
    assert admissions(sched, runner, [late], at_step=1)[-1] == "late"


def test_two_big_requests_share_the_slots() -> None:
    a = [grouped(f"a-{i}", "A", max_tokens=4) for i in range(12)]
    b = [grouped(f"b-{i}", "B", max_tokens=4) for i in range(12)]
    sched, runner = make(num_blocks=1024, block_size=4, max_batch_tokens=256, max_running=4,
                         script=scripted([*a, *b]))
    for r in a:
        sched.add(r)
    order = admissions(sched, runner, b, at_step=1)
    assert order[:4] == ["a-0", "a-1", "a-2", "a-3"]
    rest = order[4:]
    # From then on they alternate: no client gets two admissions while the other waits.
    assert rest[:16] == [x for pair in zip([f"a-{i}" for i in range(4, 12)], [f"b-{i}" for i in range(8)],
                                           strict=True) for x in pair]
