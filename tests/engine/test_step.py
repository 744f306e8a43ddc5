"""A scheduler step is plain data: it pickles whole, and the scheduler side imports no torch."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import llamarun
from llamarun.cache.block_pool import BlockPool
from llamarun.engine.request import Request
from llamarun.engine.scheduler import Scheduler
from llamarun.engine.step import NewRequest, SampledToken, ScheduledSeq, SchedulerOutput
from llamarun.sampling.params import SamplingParams


def test_scheduler_output_survives_pickling():
    sched = Scheduler(BlockPool(16, 4), max_batch_tokens=12)
    params = SamplingParams(temperature=0.7, seed=5, stop=["\n\n"], stop_token_ids=[7], logprobs=3, max_tokens=4)
    sched.add(Request("a", [1, 2, 3, 4, 5], params, frozenset({2}), 64))
    sched.add(Request("b", list(range(10, 30)), SamplingParams.greedy(), frozenset(), 64))
    out = sched.schedule()
    assert [(s.request_id, s.num_tokens) for s in out.seqs] == [("a", 5), ("b", 7)]
    copy = pickle.loads(pickle.dumps(out))
    assert copy == out and copy is not out
    assert copy.new_requests[0] == NewRequest("a", params, [1, 2, 3, 4, 5])
    assert copy.seqs[1] == ScheduledSeq("b", list(range(10, 17)), 0, out.seqs[1].block_table, False)
    assert isinstance(copy.new_requests[0].params, SamplingParams) and copy.new_requests[0].params.seed == 5


def test_step_holds_copies_not_the_scheduler_lists():
    sched = Scheduler(BlockPool(16, 4), max_batch_tokens=3)
    req = Request("a", list(range(10)), SamplingParams.greedy(), frozenset(), 64)
    sched.add(req)
    out = sched.schedule()
    sched.update(out, {})
    sched.schedule()  # reserves more blocks for the same request
    assert len(out.seqs[0].block_table) == 1 and len(req.block_table) == 2


def test_sampled_tokens_and_empty_steps_pickle():
    for item in (SchedulerOutput(finished_ids=["x"]), SampledToken(3, -0.5, [(3, -0.5), (4, -1.0)])):
        assert pickle.loads(pickle.dumps(item)) == item


def test_scheduler_side_imports_no_torch():
    code = ("import sys; import llamarun.engine.scheduler, llamarun.engine.request, llamarun.engine.step; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    root = str(Path(llamarun.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
