"""A later single request does not wait for every generation of an earlier 100-prompt request (issue 10).

(Over HTTP one request holds at most `serve --max-generations`, 64 by default, of the engine's slots.)

The scheduler admits waiting requests first come, first served, up to `max_running` at once; a request
that arrives after a 100-generation batch joins as soon as the slots of the batch's first wave free
up, ahead of nothing it arrived after and behind nothing that arrived after it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the scheduler tests' fake runner and helpers
from test_scheduler import make, request, scripted, step


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
