"""INT8 linears on CPUs (the packed int8 kernel): error bounds per layer, and on the default model vs exact math."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf
from torch import nn

from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.forward import forward_tokens
from llamarun.errors import LlamarunError
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.quant.int8 import PREFILL_ROWS, Int8Linear, Int8Method
from llamarun.quant.modes import choose_weights, weight_bytes

pack_int8 = Int8Method().pack_linear


def int8_linear(weight: torch.Tensor) -> Int8Linear:
    return Int8Method().create(Int8Method().quantize(weight))


def test_quantized_weights_round_trip_within_half_a_step():
    w = torch.randn(64, 96) * torch.linspace(0.1, 3.0, 64)[:, None]  # rows of very different ranges
    layer = int8_linear(w)
    step = layer.scale.float()[:, None]  # [out, 1]
    restored = layer.qweight.float() * step
    assert ((restored - w).abs() <= step * 0.5 * (1 + 1e-5)).all()
    assert layer.qweight.abs().max() <= 127


def test_matches_float_linear_closely():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128, bias=False)
    x = torch.randn(5, 256)
    packed = pack_int8(linear)
    expected = linear(x)
    got = packed(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    rel = (got - expected).norm() / expected.norm()
    assert rel < 0.01, rel


def test_build_model_packs_every_linear_and_keeps_embeddings(tmp_path):
    spec = TinySpec(tie_word_embeddings=True)
    weights, _ = make_weights(spec)
    path = write_hf(spec, weights, tmp_path / "hf")
    model = build_model(open_checkpoint(path, "hf"), pack=pack_int8)
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds and Int8Linear in kinds
    assert model.model.embed_tokens.weight.dtype == torch.float32
    exact = build_model(open_checkpoint(path, "hf"))
    ids = list(range(1, 40))
    a = forward_tokens(exact, ContiguousKVCache(exact.config, 64, torch.float32, "cpu"), ids, all_logits=True)
    b = forward_tokens(model, ContiguousKVCache(model.config, 64, torch.float32, "cpu"), ids, all_logits=True)
    assert (b - a).norm() / a.norm() < 0.05


def test_default_model_int8_stays_close_to_exact(default_gguf):
    """KL divergence from exact float32 on natural text: below what llama.cpp shows against Transformers."""
    ckpt = open_checkpoint(default_gguf)
    text = ("The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers that "
            "changed physics: on the photoelectric effect, Brownian motion, special relativity, and mass-energy "
            "equivalence. Each of them would have been enough to make a career. ") * 2
    ids = ckpt.tokenizer().encode(text)
    exact = build_model(ckpt)
    packed = build_model(ckpt, pack=pack_int8)
    a = forward_tokens(exact, ContiguousKVCache(exact.config, 512, torch.float32, "cpu"), ids, all_logits=True)
    b = forward_tokens(packed, ContiguousKVCache(packed.config, 512, torch.float32, "cpu"), ids, all_logits=True)
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl = (la.exp() * (la - lb)).sum(-1)  # [tokens]
    assert kl.mean() < 0.01, kl.mean()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_auto_mode_packs_quantized_files_on_cpu_only(tmp_path, default_gguf):
    gguf = open_checkpoint(default_gguf)
    spec = TinySpec()
    weights, _ = make_weights(spec)
    hf = open_checkpoint(write_hf(spec, weights, tmp_path / "hf"), "hf")
    assert choose_weights("auto", gguf, "cpu") == "packed"  # all Q4_1: run from its 4-bit weights (int4 kernel)
    assert choose_weights("auto", hf, "cpu") == "exact"
    assert choose_weights("auto", gguf, "cuda") == "exact"
    assert choose_weights("exact", gguf, "cpu") == "exact"
    assert choose_weights("int8", gguf, "cuda") == "int8"  # W8A8 on GPUs now
    with pytest.raises(LlamarunError, match="unknown weights format"):
        choose_weights("int3", gguf, "cpu")
    config = gguf.config
    assert weight_bytes(config, "int8", 4) < weight_bytes(config, "exact", 4) / 2


def test_prefill_path_agrees_with_the_int8_kernel():
    """Long inputs take the bf16-GEMM path on CPUs with bf16 units; both paths compute the same product."""
    torch.manual_seed(1)
    layer = int8_linear(torch.randn(96, 128))
    x = torch.randn(PREFILL_ROWS + 8, 128)
    long = layer(x)  # [72, 96], one call: the prefill path where available
    rows = torch.cat([layer(x[i:i + 8]) for i in range(0, x.shape[0], 8)])  # short calls: the int8 kernel
    assert (long - rows).norm() / rows.norm() < 0.01
