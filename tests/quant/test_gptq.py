"""GPTQ against round-to-nearest: the same INT4 layout, a smaller error in the layer's outputs on its inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamarun.errors import LlamarunError
from llamarun.quant.gptq import HessianHook, gptq_int4, gptq_quantize_model
from llamarun.quant.int4 import Int4Method
from llamarun.quant.layouts import dequantize
from llamarun.quant.rtn import int4_zero_points, quantize_int4


def correlated_inputs(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose features are strongly correlated, as hidden states are: a fixed random mix of few factors
    (the same mix for every seed, so other seeds draw held-out inputs from the same distribution)."""
    mix = torch.randn(k // 8, k, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k // 8, generator=gen) @ mix + 0.1 * torch.randn(rows, k, generator=gen)


def output_error(x: torch.Tensor, w: torch.Tensor, layout) -> float:
    return ((x @ w.t() - x @ dequantize(layout, torch.float32).t()).pow(2).mean() / (x @ w.t()).pow(2).mean()).item()


@pytest.mark.parametrize("group", [64, 128])
def test_gptq_beats_round_to_nearest_on_the_layers_outputs(group):
    x = correlated_inputs(4096, 256)
    w = torch.randn(96, 256) * 0.05
    hook = HessianHook(256, torch.device("cpu"))
    hook(None, (x[:2048],))
    hook(None, (x[2048:],))  # accumulated in two batches, as calibration windows arrive
    torch.testing.assert_close(hook.h, 2 * x.t() @ x / x.shape[0], rtol=1e-4, atol=1e-3)
    held_out = correlated_inputs(1024, 256, seed=1)
    rtn = output_error(held_out, w, quantize_int4(w, group))
    gptq = output_error(held_out, w, gptq_int4(w, hook.h, group))
    assert gptq < 0.6 * rtn, (gptq, rtn)


def test_the_layout_is_rtns_integer_zero_points_and_nibbles():
    x = correlated_inputs(512, 128)
    w = torch.randn(16, 128) * 0.05
    layout = gptq_int4(w, 2 * x.t() @ x / 512, 64)
    assert layout.qweight.shape == (16, 64) and layout.scales.shape == (16, 2) and layout.group_size == 64
    zeros = int4_zero_points(layout).float()
    torch.testing.assert_close(layout.mins.float(), -zeros * layout.scales.float())  # exact compressed-tensors form


def test_unseen_inputs_and_bad_groups():
    w = torch.randn(8, 64)
    h = torch.zeros(64, 64)
    h[:32, :32] = torch.eye(32)  # the last 32 inputs were never non-zero in calibration
    layout = gptq_int4(w, h, 32)
    assert dequantize(layout, torch.float32)[:, 32:].abs().max() == 0  # weights of dead inputs are dropped
    with pytest.raises(LlamarunError, match="does not tile"):
        gptq_int4(w, torch.eye(64), 48)
    with pytest.raises(ValueError, match="does not match"):
        gptq_int4(w, torch.eye(32), 32)


class Tiny(nn.Module):
    """Two 'decoder layers' of two linears each and a head: the shape gptq_quantize_model walks."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False))
                                          for _ in range(2))
        self.lm_head = nn.Linear(64, 32, bias=False)

    def forward(self, x):
        for layer in self.model.layers:
            x = x + torch.tanh(layer(x))
        return self.lm_head(x)


def test_a_model_is_quantized_layer_by_layer_against_its_own_calibration():
    torch.manual_seed(0)
    model = Tiny()
    x = correlated_inputs(1024, 64)
    want = model(x)
    calls = []
    gptq_quantize_model(model, lambda: calls.append(model(x)), Int4Method(32).create, 32)
    assert len(calls) == 3  # once per layer, once for the head
    packed = [m for m in model.modules() if type(m).__name__ == "Int4Linear"]
    assert len(packed) == 5 and not any(isinstance(m, nn.Linear) for m in model.modules())
    torch.manual_seed(0)
    rtn = Tiny()  # the same weights, rounded to nearest
    for layer in rtn.model.layers:
        for j in range(2):
            layer[j] = Int4Method(32).pack_linear(layer[j])
    rtn.lm_head = Int4Method(32).pack_linear(rtn.lm_head)
    with torch.inference_mode():
        err_gptq = (model(x) - want).pow(2).mean()
        err_rtn = (rtn(x) - want).pow(2).mean()
    assert err_gptq < err_rtn


def test_the_loop_hands_every_column_in_order_and_spreads_only_rounding_error():
    from llamarun.quant.gptq import gptq_rounding

    torch.manual_seed(3)
    weight, x = torch.randn(6, 200), torch.randn(300, 200)
    seen = []

    def exact(col: int, rest: torch.Tensor) -> torch.Tensor:
        seen.append((col, rest.shape[1]))
        return rest[:, 0].clone()  # no rounding: nothing may move onto later columns

    got = torch.empty_like(weight)

    def record(col: int, rest: torch.Tensor) -> torch.Tensor:
        got[:, col] = rest[:, 0]
        return rest[:, 0].clone()

    gptq_rounding(weight, 2 * x.t() @ x / 300, exact)
    assert [c for c, _ in seen] == list(range(200))
    assert seen[0][1] == 128 and seen[127][1] == 1 and seen[128][1] == 72  # the rest of the current block
    gptq_rounding(weight, 2 * x.t() @ x / 300, record)
    torch.testing.assert_close(got, weight)  # columns arrive as given when no error was made before them
