"""FairQueue: round-robin between client groups, arrival order within one, resumed requests first."""

from __future__ import annotations

import pytest

from llamarun.engine.fair_queue import FairQueue
from llamarun.engine.request import Request
from llamarun.sampling.params import SamplingParams


def req(rid: str, group: str | None = None) -> Request:
    return Request(rid, [1, 2, 3], SamplingParams.greedy(max_tokens=4), frozenset(), 64, group)


def drain(q: FairQueue) -> list[str]:
    out = []
    while q:
        assert q.peek() is q.peek()
        head = q.peek()
        assert q.popleft() is head
        out.append(head.request_id)
    return out


def test_requests_without_a_group_keep_arrival_order() -> None:
    q = FairQueue()
    for i in range(5):
        q.append(req(f"r{i}"))
    assert len(q) == 5 and [r.request_id for r in q] == ["r0", "r1", "r2", "r3", "r4"]
    assert drain(q) == ["r0", "r1", "r2", "r3", "r4"] and len(q) == 0 and not q


def test_groups_take_turns_and_keep_their_own_order() -> None:
    q = FairQueue()
    for i in range(4):
        q.append(req(f"big{i}", "big"))
    q.append(req("small", "small"))
    q.append(req("other0", "other"))
    q.append(req("other1", "other"))
    assert drain(q) == ["big0", "small", "other0", "big1", "other1", "big2", "big3"]


def test_a_late_group_waits_at_most_one_turn_per_waiting_group() -> None:
    q = FairQueue()
    for i in range(10):
        q.append(req(f"big{i}", "big"))
    assert q.popleft().request_id == "big0"  # the big request started admitting before the small one came
    q.append(req("late"))
    assert drain(q)[:2] == ["big1", "late"]


def test_preempted_requests_come_back_before_every_group() -> None:
    q = FairQueue()
    q.append(req("a0", "a"))
    q.append(req("b0", "b"))
    first, second = req("x", "a"), req("y", "b")
    q.appendleft(first)
    q.appendleft(second)  # the newest preemption resumes first, as with the old deque
    assert len(q) == 4 and drain(q) == ["y", "x", "a0", "b0"]


def test_remove_by_identity_wherever_it_waits() -> None:
    q = FairQueue()
    a, b, twin = req("a", "g"), req("b", "g"), req("a", "g")  # twin equals a by value, but is another request
    q.append(a)
    q.append(b)
    resumed = req("r", "g")
    q.appendleft(resumed)
    with pytest.raises(ValueError):
        q.remove(twin)
    q.remove(resumed)
    q.remove(b)
    assert len(q) == 1 and q.peek() is a
    q.remove(a)
    assert not q and list(q) == []
    with pytest.raises(IndexError):
        q.peek()
    with pytest.raises(IndexError):
        q.popleft()
