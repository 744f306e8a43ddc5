"""Tensor parallelism and pipeline stages over NCCL on two GPUs: the same answers as one GPU, clear errors.

Skipped without two CUDA devices. Runs both all-reduce paths (NCCL, and the one-shot path over symmetric
memory where this torch and driver have it) and checks that decode steps replayed CUDA graphs, so the
collectives inside the graphs are exercised, not just eager ones.
"""

from __future__ import annotations

import time

import pytest
import torch
from parallel.test_tensor_parallel import ENGINE, GREEDY, assert_same, checkpoint, run_all
from tiny_checkpoints import TinySpec

from llamarun.engine.llm_engine import LLMEngine
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.parallel.group import ParallelError
from llamarun.parallel.launch import ShardSpec, start_tensor_parallel
from llamarun.parallel.layout import Layout
from llamarun.parallel.pipeline_launch import start_parallel, stop_parallel

pytestmark = [
    pytest.mark.gpu, pytest.mark.slow, pytest.mark.timeout(100),
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs"),
]


def one_gpu(path: str) -> dict[str, list]:
    model = build_model(open_checkpoint(path, "hf"), torch.float32, "cuda:0")
    return run_all(LLMEngine(model, ENGINE, dtype=torch.float32, device="cuda:0"), GREEDY)


@pytest.mark.parametrize("allreduce", ["nccl", "auto"])
def test_tp2_over_nccl_with_cuda_graphs_equals_one_gpu(tmp_path_factory, monkeypatch, allreduce):
    monkeypatch.setenv("LLAMARUN_ALLREDUCE", allreduce)  # spawned ranks inherit it
    path = checkpoint(tmp_path_factory, TinySpec(llama3_rope=True), seed=11)
    want = one_gpu(path)
    handle = start_tensor_parallel(ShardSpec(path, "hf", ENGINE, device="cuda", timeout_s=60), 2)
    try:
        runner = handle.engine.runner
        assert handle.group.device == torch.device("cuda", 0)
        if allreduce == "nccl":
            assert handle.group.one_shot is None
        got = run_all(handle.engine, GREEDY)
        assert runner.steps["graph"] > 0  # decode steps replayed graphs holding the all-reduces
    finally:
        handle.close()
    assert_same(got, want, tol=5e-3)  # TF32 matmuls and another summation order: close, not equal


def test_a_second_parallel_model_in_one_process_takes_nccl_and_answers_alike(tmp_path_factory):
    """Symmetric memory's rendezvous cannot be repeated in one process: the second model uses NCCL only."""
    from llamarun.parallel.one_shot import first_in_process

    path = checkpoint(tmp_path_factory, TinySpec(llama3_rope=True), seed=11)
    want = one_gpu(path)
    for _ in range(2):
        first = first_in_process()
        handle = start_tensor_parallel(ShardSpec(path, "hf", ENGINE, device="cuda", timeout_s=60), 2)
        try:
            assert (handle.group.one_shot is not None) == first
            got = run_all(handle.engine, GREEDY)
        finally:
            handle.close()
        assert_same(got, want, tol=5e-3)


def test_random_70b_shaped_shard_builds_over_two_gpus_at_small_depth(monkeypatch):
    """The benchmark's random-weight shards (parallel/random_shard.py) run a step on both GPUs."""
    from llamarun.engine.llm_engine import EngineConfig
    from llamarun.parallel.random_shard import RANDOM_FORMAT
    from llamarun.sampling.params import SamplingParams

    config = EngineConfig(context_length=64, kv_tokens=256, block_size=16)
    handle = start_tensor_parallel(ShardSpec("tiny", RANDOM_FORMAT, config, "bfloat16", "cuda"), 2)
    try:
        handle.engine.add_request([1, 2, 3, 4], SamplingParams.greedy(max_tokens=4), request_id="r")
        tokens = []
        while handle.engine.has_unfinished:
            tokens += [t.token_id for o in handle.engine.step() for t in o.new_tokens]
    finally:
        handle.close()
    assert len(tokens) == 4 and all(0 <= t < 512 for t in tokens)


def test_a_dead_gpu_worker_gives_a_clear_error_within_the_timeout(tmp_path_factory):
    """Rank 1 killed between steps: rank 0 names it within the timeout instead of hanging in a collective."""
    path = checkpoint(tmp_path_factory, TinySpec(llama3_rope=True), seed=12)
    handle = start_tensor_parallel(ShardSpec(path, "hf", ENGINE, device="cuda", timeout_s=10), 2)
    try:
        run_all(handle.engine, GREEDY)  # graphs captured and replayed before the death
        worker = handle.processes[0]
        worker.kill()
        worker.join()
        handle.engine.add_request([1, 2, 3], GREEDY, request_id="after-death")
        t0 = time.monotonic()
        # Spawned GPU workers take steps through shared memory: rank 0 finds the dead one at the hand-over.
        with pytest.raises(ParallelError, match="rank 1 did not take step"):
            while handle.engine.has_unfinished:
                handle.engine.step()
        assert time.monotonic() - t0 < handle.group.timeout_s + 10
    finally:
        t0 = time.monotonic()
        handle.close()
    assert time.monotonic() - t0 < 15  # NCCL's communicator is aborted, not destroyed waiting on the dead rank


def test_pp2_over_two_gpus_equals_one_gpu(tmp_path_factory):
    """Two pipeline stages, one per GPU, activations sent over NCCL: one GPU's greedy tokens and logprobs."""
    path = checkpoint(tmp_path_factory, TinySpec(num_layers=3, llama3_rope=True), seed=21)
    want = one_gpu(path)
    handle = start_parallel(ShardSpec(path, "hf", ENGINE, device="cuda", timeout_s=60), Layout(tp=1, pp=2))
    try:
        assert handle.engine.cache.k.device == torch.device("cuda", 0)
        assert handle.engine.runner.model.lm_head is None  # the head lives on the last stage, on cuda:1
        got = run_all(handle.engine, GREEDY)
    finally:
        stop_parallel(handle)
    assert_same(got, want, tol=5e-3)
