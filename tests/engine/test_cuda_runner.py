"""The CUDA runner: decode steps replay CUDA graphs that equal eager steps token for token, on every kind of step."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.sampling.params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
# Ragged prompts, one longer than a 32-token step (chunked), arriving while others decode.
PROMPTS = [[1, 17, 42, 99, 3], list(range(30, 90)), [200, 201], [9] * 40, list(range(100, 111))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    spec = TinySpec(llama3_rope=True, hidden_size=128, num_heads=4, num_kv_heads=1)  # head_dim 32, GQA 4
    weights, _ = make_weights(spec, seed=4)
    return write_hf(spec, weights, tmp_path_factory.mktemp("c") / "hf")


def _run(path, monkeypatch, *, runner: str = "", graphs: str = "1", dtype=torch.float32, device="cuda"):
    monkeypatch.setenv("LLAMARUN_RUNNER", runner)
    monkeypatch.setenv("LLAMARUN_CUDA_GRAPHS", graphs)
    model = build_model(open_checkpoint(path, "hf"), dtype, device)
    engine = LLMEngine(model, EngineConfig(context_length=256, kv_tokens=1024, max_batch_tokens=32, max_running=8),
                       dtype=dtype, device=device)
    params = [SamplingParams.greedy(max_tokens=24), SamplingParams(temperature=0.9, top_k=20, seed=7, max_tokens=24)]
    out: dict[str, list[int]] = {}
    for i, p in enumerate(PROMPTS):  # staggered: a new request every other step, so steps mix decodes and prefills
        engine.add_request(p, params[i % 2], request_id=str(i))
        out[str(i)] = []
        for _ in range(2):
            for o in engine.step():
                out[o.request_id] += [t.token_id for t in o.new_tokens]
    while engine.has_unfinished:
        for o in engine.step():
            out[o.request_id] += [t.token_id for t in o.new_tokens]
    assert engine.pool.num_used == 0
    return [out[str(i)] for i in range(len(PROMPTS))], engine.runner


def test_graph_replays_equal_eager_steps(tiny, monkeypatch):
    graphed, runner = _run(tiny, monkeypatch)
    eager, eager_runner = _run(tiny, monkeypatch, graphs="0")
    assert type(runner).__name__ == "CudaModelRunner"
    assert runner.steps["graph"] > 10 and runner.steps["eager"] > 0  # both kinds of step happened
    assert eager_runner.steps["graph"] == 0
    assert graphed == eager and all(len(x) == 24 for x in graphed)


def test_cuda_runner_equals_the_torch_reference(tiny, monkeypatch):
    ours, _ = _run(tiny, monkeypatch)
    reference, runner = _run(tiny, monkeypatch, runner="torch")
    assert type(runner).__name__ == "ModelRunner"
    assert ours[0::2] == reference[0::2]  # greedy rows; seeded rows draw the same noise on either runner
    assert ours == reference


def test_bf16_graphs_run_end_to_end(tiny, monkeypatch):
    out, runner = _run(tiny, monkeypatch, dtype=torch.bfloat16)
    assert runner.steps["graph"] > 10 and all(len(x) == 24 for x in out)
