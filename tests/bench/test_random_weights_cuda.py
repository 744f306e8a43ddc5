"""Random weights on a GPU: built straight on the device, fast, and with no copy in host memory."""

from __future__ import annotations

import resource
import time

import pytest
import torch

from llamarun.bench.bandwidth import measure_copy_bandwidth
from llamarun.bench.random_weights import build_random_model, load_random_model, preset_config
from llamarun.sampling.params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_8b_weights_are_built_on_the_gpu_in_seconds_without_a_host_copy():
    config = preset_config("llama3.1-8b")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    t = time.perf_counter()
    model = build_random_model(config, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    grown = torch.cuda.memory_allocated() - before
    assert seconds < 30
    assert config.num_parameters * 2 <= grown < config.num_parameters * 2 + 64 * 2**20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before < 2 * 2**30  # not 16 GB
    weight = model.model.layers[31].mlp.down_proj.weight
    assert weight.is_cuda and weight.dtype == torch.bfloat16
    assert weight.float().std().item() == pytest.approx(0.02, rel=0.02)
    del model
    torch.cuda.empty_cache()


def test_tiny_random_engine_runs_on_the_gpu_in_bf16():
    rm = load_random_model("tiny", device="cuda", concurrency=2, context_length=64)
    assert rm.dtype == torch.bfloat16
    for i in range(2):
        rm.engine.add_request(list(range(i, i + 30)), SamplingParams.greedy(max_tokens=12), stop_ids=())
    made = 0
    while rm.engine.has_unfinished:
        made += sum(len(o.new_tokens) for o in rm.engine.step())
    assert made == 24


def test_copy_bandwidth_on_the_gpu_is_plausible():
    bw = measure_copy_bandwidth("cuda", nbytes=2**30, repeats=5)
    assert 1e11 < bw < 2e13  # 0.1 to 20 TB/s
