"""Random-weight models: real shapes, weights only on the device in the compute dtype, sane scales, memory plan."""

from __future__ import annotations

import math

import pytest
import torch

from llamarun.attention.backend import AttentionBackend, use_backend
from llamarun.bench.bandwidth import (
    annotate_levels,
    decode_step_bytes,
    decode_weight_bytes,
    measure_copy_bandwidth,
)
from llamarun.bench.random_weights import (
    PRESETS,
    build_random_model,
    check_fits,
    kv_tokens_for,
    load_random_model,
    preset_config,
)
from llamarun.bench.report import LevelResult
from llamarun.errors import DoesNotFitError, LlamarunError
from llamarun.layers.rotary import RotaryEmbedding
from llamarun.models.llama import LlamaForCausalLM
from llamarun.sampling.params import SamplingParams

# ----- shapes -----


@pytest.mark.parametrize("name, billions, gigabytes", [("llama3.1-8b", 8.03, 16.1), ("llama3.2-1b", 1.24, 2.5),
                                                          ("llama3.3-70b", 70.55, 141.1)])
def test_presets_have_the_published_sizes(name, billions, gigabytes):
    config = preset_config(name)
    assert round(config.num_parameters / 1e9, 2) == billions  # shared/REFERENCE.md
    assert round(config.num_parameters * 2 / 1e9, 1) == gigabytes  # bf16 bytes
    with torch.device("meta"):  # the model built from the preset has exactly that many parameters
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters
    assert config.kv_bytes_per_token(2) == 2 * config.num_layers * 8 * config.head_dim * 2


def test_unknown_shape_is_a_clear_error():
    known = r"llama3\.1-8b, llama3\.2-1b, llama3\.3-70b, tiny"
    with pytest.raises(LlamarunError, match=rf"unknown --random-weights shape 'llama2'.*{known}"):
        preset_config("llama2")


# ----- the weights -----


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_random_model_is_materialized_in_the_dtype_with_the_intended_scales(dtype):
    config = PRESETS["tiny"]
    model = build_random_model(config, device="cpu", dtype=dtype, seed=1)
    params = dict(model.named_parameters())
    assert all(p.device.type == "cpu" and p.dtype == dtype and not p.requires_grad for p in params.values())
    norms = [n for n in params if n.endswith("norm.weight")]
    assert len(norms) == 2 * config.num_layers + 1 and all(torch.all(params[n] == 1) for n in norms)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.gate_up_proj.weight"):
        assert params[name].float().std().item() == pytest.approx(0.02, rel=0.05)
        assert params[name].float().mean().abs().item() < 0.002
    assert not torch.equal(params["model.embed_tokens.weight"], params["lm_head.weight"])  # untied, drawn apart
    assert torch.equal(model.model.rotary.inv_freq, RotaryEmbedding(config).inv_freq)  # derived, not random


def test_same_seed_same_weights():
    config = PRESETS["tiny"]
    a, b, c = (build_random_model(config, device="cpu", dtype=torch.float32, seed=s) for s in (3, 3, 4))
    weight = "model.layers.0.self_attn.qkv_proj.weight"
    assert torch.equal(a.get_parameter(weight), b.get_parameter(weight))
    assert not torch.equal(a.get_parameter(weight), c.get_parameter(weight))


def test_activations_stay_finite_and_moderate_through_many_layers_in_bf16():
    # Deeper and wider than the toy, so a scale that compounds per layer would show.
    config = PRESETS["tiny"].replace(num_layers=16, hidden_size=512, intermediate_size=1536, num_heads=8,
                                     num_kv_heads=2, head_dim=64, vocab_size=2048)
    model = build_random_model(config, device="cpu", dtype=torch.bfloat16, seed=0)

    class Dense(AttentionBackend):  # full causal attention over the chunk, standing in for the paged one
        def forward(self, layer, q, k, v):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True)
            return out.transpose(0, 1)

    ids = torch.randint(0, config.vocab_size, (32,))
    with torch.inference_mode(), use_backend(Dense()):
        logits = model(ids, torch.arange(32))  # [tokens, vocab]
    assert torch.isfinite(logits).all()
    assert 0.1 < logits.std().item() < 10


def test_engine_on_a_random_model_generates_the_requested_tokens():
    rm = load_random_model("tiny", device="cpu", concurrency=3, context_length=48, dtype=torch.bfloat16)
    assert rm.dtype == torch.bfloat16 and rm.weight_bytes == PRESETS["tiny"].num_parameters * 2
    assert rm.engine.config.kv_tokens == kv_tokens_for(3, 48) and rm.engine.config.max_running == 64
    for i in range(3):
        rm.engine.add_request(list(range(i, i + 20)), SamplingParams.greedy(max_tokens=10), stop_ids=())
    made = 0
    while rm.engine.has_unfinished:
        made += sum(len(o.new_tokens) for o in rm.engine.step())
    assert made == 30 and rm.engine.pool.num_used == 0
    many = load_random_model("tiny", device="cpu", concurrency=100, context_length=32)
    assert many.engine.config.max_running == 100  # the engine may hold every requested request at once


def test_context_outside_the_model_is_a_clear_error():
    with pytest.raises(LlamarunError, match=r"context length 5000 is outside 16\.\.4096"):
        load_random_model("tiny", device="cpu", concurrency=1, context_length=5000)


# ----- the memory plan -----


def test_kv_cache_sized_to_concurrency_times_context():
    assert kv_tokens_for(256, 640) == 256 * 41 * 16  # 40 blocks of context + one spare, per request
    assert kv_tokens_for(1, 33) == 4 * 16


def test_does_not_fit_names_the_concurrency_that_would():
    config = preset_config("llama3.1-8b")
    available = 30 * 10**9
    with pytest.raises(DoesNotFitError, match=r"needs .* for 256 requests of 640 tokens .* cuda has 30.0 GB free") as e:
        check_fits("llama3.1-8b", config, torch.bfloat16, "cuda", concurrency=256, context_length=640,
                   available_bytes=available)
    most = int(e.value.hint.split("at most ")[1].split()[0])
    assert most > 1
    check_fits("llama3.1-8b", config, torch.bfloat16, "cuda", concurrency=most, context_length=640,
               available_bytes=available)  # the advice is right: that many fit ...
    with pytest.raises(DoesNotFitError):  # ... and one more does not
        check_fits("llama3.1-8b", config, torch.bfloat16, "cuda", concurrency=most + 1, context_length=640,
                   available_bytes=available)


def test_weights_that_cannot_fit_at_all_say_so():
    with pytest.raises(DoesNotFitError, match=r"weights 141\.1 GB.*the weights alone do not fit"):
        check_fits("llama3.3-70b", preset_config("llama3.3-70b"), torch.bfloat16, "cuda", concurrency=1,
                   context_length=384, available_bytes=139 * 10**9)


# ----- bandwidth -----


def test_copy_bandwidth_is_measured_on_the_cpu_too():
    bw = measure_copy_bandwidth("cpu", nbytes=8 * 2**20, repeats=3)
    assert math.isfinite(bw) and 1e8 < bw < 1e13


def test_decode_bytes_count_every_weight_but_the_embedding_table():
    config = preset_config("llama3.1-8b")
    embed = 128256 * 4096
    assert decode_weight_bytes(config, 2) == (config.num_parameters - embed) * 2
    tied = config.replace(tie_word_embeddings=True)  # the table is the head then, read whole
    assert decode_weight_bytes(tied, 2) == tied.num_parameters * 2
    assert decode_step_bytes(config, 2, 100) == decode_weight_bytes(config, 2) + 100 * 131072


def test_annotated_fraction_is_bytes_per_step_times_steps_per_second_over_copy():
    config = PRESETS["tiny"]
    one = LevelResult("offline", 1, 3, 48, 24, 1.0, tpot=[0.01, 0.02, 0.04])
    four = LevelResult("offline", 4, 2, 32, 16, 1.0, tpot=[0.05, 0.05])  # fewer requests than concurrency
    annotate_levels([one, four], config, 4, prompt_tokens=16, output_tokens=8, copy_bytes_per_s=1e9)
    step1 = decode_step_bytes(config, 4, 16 + 4)
    assert one.extra["decode_bytes_per_step"] == int(step1)
    assert one.extra["decode_bw_fraction"] == pytest.approx(step1 / 0.02 / 1e9, rel=1e-3)
    assert four.extra["decode_bytes_per_step"] == int(decode_step_bytes(config, 4, 2 * 20))
    annotate_levels([one], config, 4, prompt_tokens=16, output_tokens=8, copy_bytes_per_s=None)
    assert one.extra["decode_bw_fraction"] is None
