"""Pipeline stages on CPUs with gloo: PP=2 and TP=2 x PP=2 give the one-process engine's tokens and logprobs.

This test process is rank 0 (the scheduler, stage 0); the other ranks are spawned. The tiny model has 3
layers, so the stages are uneven (2 + 1) and the split is the balanced one. The same staggered requests,
chunked prompts and mixed decode/prefill steps as the tensor-parallel tests run through every stage.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from parallel.test_tensor_parallel import ENGINE, GREEDY, SEEDED, assert_same, checkpoint, one_process, run_all
from tiny_checkpoints import TinySpec

from llamarun.parallel.group import ParallelError
from llamarun.parallel.launch import ShardSpec
from llamarun.parallel.layout import Layout
from llamarun.parallel.pipeline_launch import start_parallel, stop_parallel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return checkpoint(tmp_path_factory, TinySpec(num_layers=3, llama3_rope=True), seed=21)


@pytest.fixture(scope="module")
def expected(model_path):
    return {"greedy": one_process(model_path, GREEDY), "seeded": one_process(model_path, SEEDED)}


@pytest.fixture(scope="module")
def pp2(model_path):
    handle = start_parallel(ShardSpec(model_path, "hf", ENGINE, timeout_s=5), Layout(tp=1, pp=2))
    try:
        yield handle
    finally:
        handle.close()


def test_pp2_greedy_tokens_and_logprobs_equal_one_process(pp2, expected):
    assert pp2.engine.cache.k.shape[0] == 2  # rank 0's stage holds layers 0-1 of 3 in its KV cache
    assert pp2.engine.runner.model.lm_head is None  # the head lives on the last stage only
    runner, engine_step = pp2.engine.runner.inner, pp2.engine.step
    steps = []
    pp2.engine.step = lambda: steps.append(1) or engine_step()
    try:
        before = runner.parts_run
        got = run_all(pp2.engine, GREEDY)
    finally:
        del pp2.engine.step
    assert runner.parts_run - before > len(steps)  # steps of several sequences ran as two micro-batches
    assert_same(got, expected["greedy"])


def test_pp2_seeded_sampling_equals_one_process(pp2, expected):
    assert_same(run_all(pp2.engine, SEEDED), expected["seeded"])


def test_pp2_a_hung_then_dead_stage_fails_within_the_timeout_naming_the_rank(pp2):
    """A stopped last stage (SIGSTOP) times out where rank 0 waits for it; killed, later steps fail at once."""
    worker = pp2.processes[0]
    os.kill(worker.pid, signal.SIGSTOP)
    pp2.engine.add_request([1, 2, 3], GREEDY, request_id="hung")
    t0 = time.monotonic()
    # Rank 0 stops either in the step broadcast or waiting for the last stage's tokens, as timing has it.
    with pytest.raises(ParallelError, match=r"rank 0 (\(stage 0, tp rank 0\) )?of 2: (step broadcast|receive of "
                                            r"sampled tokens from rank 1) failed") as caught:
        while pp2.engine.has_unfinished:
            pp2.engine.step()
    assert time.monotonic() - t0 < pp2.group.timeout_s + 10
    worker.kill()
    worker.join()
    with pytest.raises(ParallelError) as again:
        pp2.engine.step()
    assert again.value is caught.value
    t0 = time.monotonic()
    pp2.close()
    assert time.monotonic() - t0 < 10


def test_tp2_pp2_equals_one_process(model_path, expected):
    """Four ranks: two stages of two tensor-parallel ranks each; each stage all-reduces inside itself."""
    handle = start_parallel(ShardSpec(model_path, "hf", ENGINE, timeout_s=30), Layout(tp=2, pp=2))
    try:
        assert handle.engine.cache.k.shape[:2] == (2, 1)  # stage 0's two layers, this rank's one KV head
        got = run_all(handle.engine, GREEDY)
        last_stage_rank = handle.processes[2]  # rank 3: stage 1, tp rank 1
        last_stage_rank.kill()
        last_stage_rank.join()
        handle.engine.add_request([5, 6, 7], GREEDY, request_id="after-death")
        t0 = time.monotonic()
        with pytest.raises(ParallelError, match="rank 0 of 4"):
            while handle.engine.has_unfinished:
                handle.engine.step()
        assert time.monotonic() - t0 < handle.group.timeout_s + 10
    finally:
        stop_parallel(handle)
    assert_same(got, expected["greedy"])
