"""A tiny model built under each method (the `pack` hook): every linear packed, logits and greedy tokens close."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf
from torch import nn

from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.forward import forward_tokens
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.quant.footprint import model_footprint, plan_footprint, total_bytes
from llamarun.quant.method import PackedLinear
from llamarun.quant.modes import method_for, pack_hook, weight_bytes

# Divisible by 128 everywhere, so int4-g128 applies; vocab 260 is not a multiple of 16, so the int4 head
# runs the CPU reference while the decoder linears run PyTorch's int4 kernel.
SPEC = TinySpec(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)
# Mean KL per token from exact float32, and top-1 agreement, on random weights whose logits are close
# together (median top-2 margin 0.2): measured 0.002/0.89 fp8, 0.0001/0.95 int8, 0.04/0.5 int4. A wrong
# layout gives a KL of several nats and agreement near 1/vocab.
KL_BOUND = {"fp8": 0.01, "int8": 0.005, "int4-g128": 0.1, "int4-g64": 0.1}
AGREEMENT = {"fp8": 0.8, "int8": 0.9, "int4-g128": 0.35, "int4-g64": 0.35}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    weights, _ = make_weights(SPEC, seed=3)
    return write_hf(SPEC, weights, tmp_path_factory.mktemp("hf") / "hf")


def _logits(model, ids):
    cache = ContiguousKVCache(model.config, 128, torch.float32, "cpu")
    return forward_tokens(model, cache, ids, all_logits=True)  # [tokens, vocab]


def _greedy(model, prompt, steps):
    cache = ContiguousKVCache(model.config, 128, torch.float32, "cpu")
    logits = forward_tokens(model, cache, prompt)
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax()))
        logits = forward_tokens(model, cache, [out[-1]])
    return out


@pytest.mark.parametrize("mode", list(KL_BOUND))
def test_every_linear_is_packed_and_outputs_stay_close(checkpoint, mode):
    model = build_model(open_checkpoint(checkpoint, "hf"), pack=pack_hook(mode))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert not linears and len(packed) == 4 * SPEC.num_layers + 1  # qkv, o, gate_up, down per layer + head
    exact = build_model(open_checkpoint(checkpoint, "hf"))
    ids = list(range(3, 60))
    a, b = _logits(exact, ids), _logits(model, ids)
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl = (la.exp() * (la - lb)).sum(-1).mean().item()  # mean over tokens
    assert kl < KL_BOUND[mode], kl
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > AGREEMENT[mode]
    # Greedy decoding: the first tokens agree with exact math (a wrong layout derails at once).
    assert _greedy(model, ids[:8], 6)[:3] == _greedy(exact, ids[:8], 6)[:3]
    # The memory plan's estimate is the built model's real packed size.
    groups = model_footprint(model)
    assert total_bytes(groups) == weight_bytes(model.config, mode, 4)
    assert [g.bytes for g in groups] == [g.bytes for g in plan_footprint(model.config, method_for(mode), 4, "float32")]
    assert {g.group: g.format for g in groups}["attention"] == mode


def test_tied_head_is_packed_apart_from_the_float_embedding(tmp_path):
    spec = TinySpec(tie_word_embeddings=True)
    weights, _ = make_weights(spec)
    path = write_hf(spec, weights, tmp_path / "hf")
    model = build_model(open_checkpoint(path, "hf"), pack=pack_hook("int4-g64"))
    assert isinstance(model.lm_head, PackedLinear)
    assert model.model.embed_tokens.weight.dtype == torch.float32
    groups = {g.group: g for g in model_footprint(model)}
    assert groups["head"].format == "int4-g64" and groups["embedding"].format == "float32"
    assert groups["embedding"].decode_bytes == spec.hidden_size * 4  # one row per token
    assert total_bytes(list(groups.values())) == weight_bytes(model.config, "int4-g64", 4)


def test_exact_footprint_is_the_parameter_count(checkpoint):
    model = build_model(open_checkpoint(checkpoint, "hf"))
    assert total_bytes(model_footprint(model)) == model.config.num_parameters * 4 == weight_bytes(
        model.config, "exact", 4)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("head", "head_format"), [("exact", "float32"), ("int8", "int8")])
def test_head_flag_holds_the_head_apart_from_the_decoder(tmp_path, tied, head, head_format):
    from llamarun.quant.modes import weights_mode

    spec = TinySpec(tie_word_embeddings=tied)
    path = write_hf(spec, make_weights(spec)[0], tmp_path / "hf")
    mode = weights_mode("int4", 64, head)
    model = build_model(open_checkpoint(path, "hf"), pack=pack_hook(mode))
    groups = {g.group: g for g in model_footprint(model)}
    assert groups["attention"].format == groups["mlp"].format == "int4-g64"
    assert groups["head"].format.startswith(head_format)
    if head == "exact":
        assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied  # a tied head stays the table
    # What the memory plan expects is what was built, the head included.
    assert total_bytes(model_footprint(model)) == weight_bytes(model.config, mode, 4)
    # The head's rounding is gone (exact) or smaller (int8): the logits sit closer to exact math than int4's head.
    exact = build_model(open_checkpoint(path, "hf"))
    same = build_model(open_checkpoint(path, "hf"), pack=pack_hook(weights_mode("int4", 64)))
    ids = list(range(3, 40))
    want = torch.log_softmax(_logits(exact, ids), -1)

    def kl(m: nn.Module) -> float:
        got = torch.log_softmax(_logits(m, ids), -1)
        return (want.exp() * (want - got)).sum(-1).mean().item()

    assert kl(model) < kl(same)
