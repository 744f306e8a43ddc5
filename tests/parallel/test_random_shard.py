"""Random-weight shards for benchmarks, and the all-reduce choice, on CPUs with gloo."""

from __future__ import annotations

import pytest
import torch

from llamarun.bench.random_weights import load_random_model
from llamarun.engine.llm_engine import EngineConfig
from llamarun.errors import LlamarunError
from llamarun.parallel.launch import ShardSpec, start_tensor_parallel
from llamarun.parallel.one_shot import allreduce_choice, make_one_shot
from llamarun.parallel.random_shard import RANDOM_FORMAT
from llamarun.parallel.settings import TP_ENV
from llamarun.quant.footprint import model_footprint
from llamarun.sampling.params import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_random_shards_over_two_ranks_run_the_benchmark_shape_with_per_rank_heads(monkeypatch):
    monkeypatch.setenv(TP_ENV, "2")
    rm = load_random_model("tiny", device="cpu", concurrency=2, context_length=32)
    try:
        assert rm.ranks == 2
        assert rm.engine.cache.k.shape[1] == 1  # tiny has 2 KV heads: one on each rank
        rm.engine.add_request([5, 6, 7], SamplingParams.greedy(max_tokens=3), request_id="a")
        tokens = []
        while rm.engine.has_unfinished:
            tokens += [t.token_id for o in rm.engine.step() for t in o.new_tokens]
        assert len(tokens) == 3 and all(0 <= t < rm.config.vocab_size for t in tokens)
        # The footprint looks through the tensor-parallel wrappers: rank 0's shard of every group is counted.
        groups = {g.group: g for g in model_footprint(rm.engine.runner.model)}
        c, hd = rm.config, rm.config.head_dim
        q, kv = c.num_heads // 2 * hd, max(1, c.num_kv_heads // 2) * hd
        assert groups["attention"].bytes == c.num_layers * ((q + 2 * kv) * c.hidden_size + c.hidden_size * q) * 4
        assert groups["head"].bytes == groups["embedding"].bytes == c.vocab_size // 2 * c.hidden_size * 4
    finally:
        rm.close()


def test_an_unknown_random_shape_fails_before_any_rank_starts():
    spec = ShardSpec("llama9-1t", RANDOM_FORMAT, EngineConfig(context_length=32, kv_tokens=64, block_size=16))
    with pytest.raises(LlamarunError, match="unknown --random-weights shape"):
        start_tensor_parallel(spec, 2)


def test_allreduce_choice_is_checked(monkeypatch):
    monkeypatch.setenv("LLAMARUN_ALLREDUCE", "One-Shot")
    assert allreduce_choice() == "one-shot"
    monkeypatch.setenv("LLAMARUN_ALLREDUCE", "ring")
    with pytest.raises(LlamarunError, match="nccl, one-shot or auto"):
        allreduce_choice()


def test_no_one_shot_on_cpus_so_gloo_sums_every_size(monkeypatch):
    monkeypatch.setenv("LLAMARUN_ALLREDUCE", "one-shot")
    assert make_one_shot(None, torch.device("cpu"), torch.float32) is None
