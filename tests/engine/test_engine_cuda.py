"""The same engine on a GPU: float32 CUDA outputs equal the CPU's, and bf16 runs end to end."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.sampling.params import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
PROMPTS = [[1, 17, 42, 99, 3], list(range(30, 90)), [200, 201], [9] * 40]


def _run(path, device: str, dtype: torch.dtype, params: SamplingParams, overlap: bool = True,
         stop_ids: tuple[int, ...] = ()) -> list[list[int]]:
    model = build_model(open_checkpoint(path, "hf"), dtype, device)
    engine = LLMEngine(model, EngineConfig(context_length=128, kv_tokens=256, max_batch_tokens=32),
                       dtype=dtype, device=device)
    engine.runner.overlap = overlap
    for i, p in enumerate(PROMPTS):
        engine.add_request(p, params, request_id=str(i), stop_ids=stop_ids if i % 2 else ())
    out: dict[str, list[int]] = {str(i): [] for i in range(len(PROMPTS))}
    while engine.has_unfinished:
        for o in engine.step():
            out[o.request_id] += [t.token_id for t in o.new_tokens]
    assert engine.pool.num_used == 0
    return [out[str(i)] for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    spec = TinySpec(llama3_rope=True)
    weights, _ = make_weights(spec, seed=2)
    return write_hf(spec, weights, tmp_path_factory.mktemp("g") / "hf")


def test_cuda_float32_equals_cpu(tiny):
    params = SamplingParams.greedy(max_tokens=16)
    assert _run(tiny, "cuda", torch.float32, params) == _run(tiny, "cpu", torch.float32, params)


def test_cuda_bf16_and_seeded_sampling_run(tiny):
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=16)
    a = _run(tiny, "cuda", torch.bfloat16, params)
    b = _run(tiny, "cuda", torch.bfloat16, params)
    assert a == b and all(len(x) == 16 for x in a)


def test_overlapped_decoding_equals_one_step_at_a_time(tiny):
    """The GPU feeds each planned-ahead step the tokens the step before sampled (engine/llm_engine.py): the
    same tokens as one step at a time, greedy and seeded, with requests ending on stop tokens mid-flight."""
    greedy = SamplingParams.greedy(max_tokens=24)
    plain = _run(tiny, "cuda", torch.float32, greedy, overlap=False)
    stop = plain[1][5]
    assert _run(tiny, "cuda", torch.float32, greedy) == plain
    stopped = _run(tiny, "cuda", torch.float32, greedy, stop_ids=(stop,))
    assert stopped == _run(tiny, "cuda", torch.float32, greedy, overlap=False, stop_ids=(stop,))
    assert stopped[1] == plain[1][:plain[1].index(stop)]
    seeded = SamplingParams(temperature=0.8, top_k=40, seed=9, max_tokens=24)
    assert _run(tiny, "cuda", torch.bfloat16, seeded) == _run(tiny, "cuda", torch.bfloat16, seeded, overlap=False)


def _run_int4(path, monkeypatch, graphs: bool) -> list[list[int]]:
    from llamarun.quant.modes import pack_hook

    monkeypatch.setenv("LLAMARUN_CUDA_GRAPHS", "1" if graphs else "0")
    model = build_model(open_checkpoint(path, "hf"), torch.bfloat16, "cuda", pack=pack_hook("int4-g128"))
    engine = LLMEngine(model, EngineConfig(context_length=128, kv_tokens=256, max_batch_tokens=32),
                       dtype=torch.bfloat16, device="cuda")
    assert engine.runner.steps is not None
    engine.add_request(PROMPTS[1], SamplingParams.greedy(max_tokens=16), request_id="a")
    tokens = []
    while engine.has_unfinished:
        for o in engine.step():
            tokens += [t.token_id for t in o.new_tokens]
    assert engine.runner.steps["graph" if graphs else "eager"] > 0
    return tokens


def test_int4_batch_one_decodes_the_same_in_cuda_graphs(tmp_path, monkeypatch):
    """Batch-1 INT4 decode runs two kernels per linear, the second launched as a programmatic dependent of the
    first (PDL): captured in a CUDA graph, the tokens must equal the eager run's."""
    spec = TinySpec(llama3_rope=True, hidden_size=256, intermediate_size=512)
    weights, _ = make_weights(spec, seed=5)
    path = write_hf(spec, weights, tmp_path / "hf")
    eager = _run_int4(path, monkeypatch, graphs=False)
    assert len(eager) == 16
    assert _run_int4(path, monkeypatch, graphs=True) == eager
