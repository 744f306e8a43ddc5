"""Tensor parallelism on CPUs with gloo: spawned ranks give the one-process engine's tokens and logprobs.

This test process is rank 0 (scheduler and engine loop); ranks 1..N-1 are spawned processes. Requests
arrive staggered, long prompts go in chunks, decodes batch with prefills: the same steps as one process.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.errors import LlamarunError
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.parallel.group import ParallelError
from llamarun.parallel.launch import ShardSpec, start_tensor_parallel
from llamarun.sampling.params import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# 32 tokens a step: the 60-token prompt goes in two chunks, next to the others' decodes.
ENGINE = EngineConfig(context_length=128, kv_tokens=512, block_size=16, max_batch_tokens=32)
GREEDY = dataclasses.replace(SamplingParams.greedy(max_tokens=8), logprobs=3)
SEEDED = SamplingParams(temperature=0.9, top_k=0, top_p=1.0, seed=1234, max_tokens=8, logprobs=0)
PROMPTS = [[1, 17, 42, 99, 3], list(range(30, 90)), [200, 201], [9] * 20]
ARRIVALS = [0, 0, 2, 3]


def run_all(engine: LLMEngine, params: SamplingParams) -> dict[str, list]:
    """Add prompt i at step ARRIVALS[i]; step until done; per request: (token, logprob, top) of each token."""
    out: dict[str, list] = {f"r{i}": [] for i in range(len(PROMPTS))}
    step = 0
    while step <= max(ARRIVALS) or engine.has_unfinished:
        for i, arrival in enumerate(ARRIVALS):
            if arrival == step:
                engine.add_request(PROMPTS[i], params, request_id=f"r{i}")
        for o in engine.step():
            out[o.request_id].extend((t.token_id, t.logprob, t.top) for t in o.new_tokens)
        step += 1
    return out


def assert_same(got: dict[str, list], want: dict[str, list], tol: float = 1e-4) -> None:
    for rid, tokens in want.items():
        assert [t[0] for t in got[rid]] == [t[0] for t in tokens], rid
        for (_, logprob, top), (_, ref_logprob, ref_top) in zip(got[rid], tokens, strict=True):
            assert logprob == pytest.approx(ref_logprob, abs=tol)
            if ref_top:
                assert [i for i, _ in top] == [i for i, _ in ref_top]
                assert [lp for _, lp in top] == pytest.approx([lp for _, lp in ref_top], abs=tol)


def checkpoint(tmp_path_factory, spec: TinySpec, seed: int) -> str:
    weights, _ = make_weights(spec, seed=seed)
    return str(write_hf(spec, weights, tmp_path_factory.mktemp("tp") / "hf"))


def one_process(path: str, params: SamplingParams) -> dict[str, list]:
    model = build_model(open_checkpoint(path, "hf"))
    return run_all(LLMEngine(model, ENGINE, dtype=torch.float32, device="cpu"), params)


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    """Two ranks over the tiny model (4 heads, 2 KV heads: one of each per rank)."""
    path = checkpoint(tmp_path_factory, TinySpec(llama3_rope=True), seed=11)
    handle = start_tensor_parallel(ShardSpec(path, "hf", ENGINE, timeout_s=15), 2)
    try:
        yield path, handle
    finally:
        handle.close()


def test_tp2_greedy_tokens_and_logprobs_equal_one_process(tp2):
    path, handle = tp2
    assert handle.engine.cache.k.shape[1] == 1  # this rank's KV heads only
    assert_same(run_all(handle.engine, GREEDY), one_process(path, GREEDY))


def test_tp2_seeded_sampling_equals_one_process(tp2):
    path, handle = tp2
    assert_same(run_all(handle.engine, SEEDED), one_process(path, SEEDED))


def test_a_second_parallel_model_in_one_process_is_refused_clearly(tp2):
    path, _ = tp2
    with pytest.raises(LlamarunError, match="already running in this process"):
        start_tensor_parallel(ShardSpec(path, "hf", ENGINE), 2)


def test_a_dead_worker_gives_a_clear_error_within_the_timeout(tp2):
    _, handle = tp2
    worker = handle.processes[0]
    worker.kill()
    worker.join()
    handle.engine.add_request([1, 2, 3], GREEDY, request_id="after-death")
    t0 = time.monotonic()
    with pytest.raises(ParallelError, match="rank 0 of 2") as caught:
        while handle.engine.has_unfinished:
            handle.engine.step()
    assert time.monotonic() - t0 < handle.group.timeout_s + 10
    with pytest.raises(ParallelError) as again:  # later steps fail at once, not after another timeout
        handle.engine.step()
    assert again.value is caught.value
    t0 = time.monotonic()
    handle.close()  # the process group of a broken run still comes down, without waiting on the dead rank
    assert time.monotonic() - t0 < 10


def test_tp4_replicated_kv_heads_tied_padded_vocab(tmp_path_factory):
    """4 ranks, 2 KV heads (each replicated on two ranks), tied embeddings, 258-token vocab padded to 4 x 65."""
    spec = TinySpec(vocab_size=258, tie_word_embeddings=True)
    path = checkpoint(tmp_path_factory, spec, seed=5)
    handle = start_tensor_parallel(ShardSpec(path, "hf", ENGINE, timeout_s=30), 4)
    try:
        got = run_all(handle.engine, GREEDY)
    finally:
        handle.close()
    assert_same(got, one_process(path, GREEDY))


def test_a_tp_the_heads_cannot_split_fails_before_starting_anything(tmp_path_factory):
    path = checkpoint(tmp_path_factory, TinySpec(), seed=1)
    with pytest.raises(LlamarunError, match="--tp that divides"):
        start_tensor_parallel(ShardSpec(path, "hf", ENGINE), 3)


def test_a_hung_worker_times_out_naming_the_rank_and_collective(tmp_path_factory):
    """A worker that stops answering (SIGSTOP) is not a hang: the collective's timeout names where rank 0 stood."""
    import os
    import signal

    path = checkpoint(tmp_path_factory, TinySpec(), seed=2)
    handle = start_tensor_parallel(ShardSpec(path, "hf", ENGINE, timeout_s=3), 2)
    worker = handle.processes[0]
    try:
        os.kill(worker.pid, signal.SIGSTOP)
        handle.engine.add_request([1, 2, 3], GREEDY, request_id="hung")
        t0 = time.monotonic()
        with pytest.raises(ParallelError, match=r"rank 0 of 2: (all_reduce after|step broadcast)"):
            while handle.engine.has_unfinished:
                handle.engine.step()
        assert time.monotonic() - t0 < 3 + 10
    finally:
        handle.close()  # kills the stopped worker after waiting its timeout
    assert not worker.is_alive()


def test_tp2_keeps_a_head_held_apart_on_every_rank(tmp_path_factory):
    """`--quantize int8 --head exact` over two ranks: each rank packs its decoder slices, its head slice stays float."""
    from llamarun.quant.footprint import model_footprint

    path = checkpoint(tmp_path_factory, TinySpec(), seed=13)
    handle = start_tensor_parallel(ShardSpec(path, "hf", ENGINE, weights="int8+head-exact", timeout_s=30), 2)
    try:
        formats = {g.group: g.format for g in model_footprint(handle.engine.runner.model)}
        got = run_all(handle.engine, GREEDY)
    finally:
        handle.close()
    assert formats["attention"] == formats["mlp"] == "int8" and formats["head"].startswith("float32")
    assert [len(tokens) for tokens in got.values()] == [8] * len(PROMPTS)
