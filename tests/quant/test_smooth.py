"""SmoothQuant: the float model's outputs unchanged, the outlier channels gone from the linears' inputs, and per-token
8-bit activations closer to the float ones after it."""

from __future__ import annotations

import pytest
import torch

from llamarun.attention.backend import AttentionBackend, use_backend
from llamarun.bench.random_weights import PRESETS, build_random_model
from llamarun.errors import LlamarunError
from llamarun.quant.int8 import Int8Method
from llamarun.quant.smooth import LINEARS, input_maxima, smooth_model, smooth_on_text, smoothing_factors

CONFIG = PRESETS["tiny"].replace(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2,
                                 head_dim=16, vocab_size=128)


class Causal(AttentionBackend):
    def forward(self, layer, q, k, v):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True)
        return out.transpose(0, 1)


def _model_with_outliers(seed: int = 0):
    """A random float32 model whose norms blow up three channels (real residual streams have a few such)."""
    model = build_random_model(CONFIG, device="cpu", dtype=torch.float32, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[[3, 17, 40]] *= 60.0
    return model


def _run(model, ids):
    with torch.inference_mode(), use_backend(Causal()):
        return model(ids, torch.arange(ids.shape[0]))


def _int8_rows(x: torch.Tensor) -> torch.Tensor:
    """Round each row to 8 bits on its own scale: per token for activations, per output channel for weights."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    return (x / scale).round() * scale


def test_smoothing_leaves_the_float_model_s_outputs_as_they_were():
    model = _model_with_outliers()
    ids = torch.randint(0, CONFIG.vocab_size, (48,), generator=torch.Generator().manual_seed(1))
    before = _run(model, ids)
    smooth_model(model, lambda: _run(model, torch.randint(0, CONFIG.vocab_size, (64,))))
    torch.testing.assert_close(_run(model, ids), before, rtol=1e-4, atol=1e-4)


def test_outlier_channels_move_into_the_weights_and_8_bit_activations_lose_less():
    model = _model_with_outliers()
    calibrate = torch.randint(0, CONFIG.vocab_size, (96,), generator=torch.Generator().manual_seed(2))
    held_out = torch.randint(0, CONFIG.vocab_size, (64,), generator=torch.Generator().manual_seed(3))

    def activation_error() -> dict[str, float]:
        """Relative error of each linear's W8A8 output (per-token activations, per-channel weights) on held-out
        tokens, worst layer."""
        worst: dict[str, float] = {}
        handles = []
        for layer in model.model.layers:
            for name in LINEARS:
                def hook(module, args, name=name):
                    x, w = args[0], module.weight
                    exact = x @ w.t()
                    err = ((_int8_rows(x) @ _int8_rows(w).t() - exact).norm() / exact.norm()).item()
                    worst[name] = max(worst.get(name, 0.0), err)
                handles.append(layer.get_submodule(name).register_forward_pre_hook(hook))
        _run(model, held_out)
        for handle in handles:
            handle.remove()
        return worst

    spread_before = max(m["self_attn.qkv_proj"].max() / m["self_attn.qkv_proj"].median()
                        for m in input_maxima(model, lambda: _run(model, calibrate)))
    before = activation_error()
    smooth_model(model, lambda: _run(model, calibrate))
    spread_after = max(m["self_attn.qkv_proj"].max() / m["self_attn.qkv_proj"].median()
                       for m in input_maxima(model, lambda: _run(model, calibrate)))
    after = activation_error()
    assert spread_after < spread_before / 4, (spread_before, spread_after)
    for name in ("self_attn.qkv_proj", "mlp.gate_up_proj"):
        assert after[name] < 0.5 * before[name], (name, before[name], after[name])


def test_factors_are_one_where_a_channel_was_never_active():
    s = smoothing_factors(torch.tensor([4.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 0.0]), alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, 1.0, 1.0]))


def test_what_cannot_be_smoothed_is_a_clear_error():
    model = _model_with_outliers()
    with pytest.raises(LlamarunError, match=r"outside 0\.\.1"):
        smooth_model(model, lambda: None, alpha=1.5)
    with pytest.raises(LlamarunError, match="never reached layer 0"):
        smooth_model(model, lambda: None)  # a calibration that runs nothing
    with pytest.raises(LlamarunError, match="SmoothQuant needs at least 256 calibration tokens") as err:
        smooth_on_text(model, list(range(40)), ctx=32, dtype=torch.float32, device="cpu", hint="give more text")
    assert "give more text" in str(err.value.hint if hasattr(err.value, "hint") else err.value)
    packed = _model_with_outliers()
    attn = packed.model.layers[0].self_attn
    attn.qkv_proj = Int8Method().pack_linear(attn.qkv_proj)
    with pytest.raises(LlamarunError, match="already packed"):
        smooth_model(packed, lambda: None)
