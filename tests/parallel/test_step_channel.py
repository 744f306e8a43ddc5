"""The shared-memory step channel: steps arrive whole and in order, big ones defer to gloo, stalls are errors."""

from __future__ import annotations

import threading

import pytest

from llamarun.parallel import step_channel
from llamarun.parallel.group import ParallelError
from llamarun.parallel.step_channel import StepChannel


@pytest.fixture
def channel():
    writer = StepChannel(workers=2, timeout_s=2.0)
    readers = [StepChannel(2, writer.name), StepChannel(2, writer.name)]
    yield writer, readers
    for r in readers:
        r.close()
    writer.close()


def test_every_worker_gets_every_step_in_order(channel):
    writer, readers = channel
    steps = [{"step": i, "ids": list(range(i * 50))} for i in range(40)] + [None]
    got: list[list] = [[], []]

    def read(i: int) -> None:
        while True:
            ok, step = readers[i].receive(i)
            assert ok
            got[i].append(step)
            if step is None:
                return

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for step in steps:
        assert writer.send(step)
    for t in threads:
        t.join(10)
    assert got == [steps, steps]  # a step is never overwritten before both workers copied it out


def test_a_step_larger_than_the_segment_is_left_to_gloo(channel, monkeypatch):
    writer, readers = channel
    monkeypatch.setattr(step_channel, "CAPACITY", 64)
    assert not writer.send(list(range(1000)))
    assert readers[0].receive(0) == (False, None)
    assert readers[1].receive(1) == (False, None)
    assert writer.send([1, 2])  # small again: through the channel
    assert readers[0].receive(0) == (True, [1, 2])


def test_a_worker_that_never_takes_its_step_is_a_named_error(channel):
    writer, readers = channel
    writer.send("first")
    readers[0].receive(0)  # worker 2 (rank 2) never reads it
    with pytest.raises(ParallelError, match="rank 2 did not take step 1"):
        writer.send("second")
