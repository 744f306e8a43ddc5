"""SmoothQuant: move the activations' outlier channels into the weights before W8A8, with the float model unchanged.

Why: per-token activation scales are set by a token's largest channel, and a few channels of the residual stream
(and of silu(gate) * up) run far larger than the rest, so every other channel keeps few levels. On the default
model, INT8 W8A8 costs a mean KL of 0.040 nats per token where weight-only INT8 costs 0.004
(benchmarks/results/eval-default-model-gpu-2026-11-30.md).

How (Xiao et al., 2022): per input channel j of a linear, s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha), from
the inputs seen on calibration text. The activations are divided by s and the weight's columns multiplied by it,
so the product is the same; the division is folded into whatever writes the activation, so it costs nothing at
run time:
- q/k/v and gate/up: into the RMSNorm's weight before them;
- down: into the rows of `up` (silu(gate) * up / s = silu(gate) * (up / s));
- o: into the rows of `v` (attention mixes each value channel only with itself). A value channel feeds one output
  channel per query head of its group, so those share one factor (the largest maxima over the group).
The output head is left alone (a tied head is the embedding table, and nothing before it is free to fold into).
Channels never seen active keep s = 1. The folding runs in float32 and rounds once to the weights' dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llamarun.errors import LlamarunError

ALPHA = 0.5  # the paper's default; on the default model 0.5 beat 0.8 for INT8 (mean KL 0.019 against 0.029)
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def input_maxima(model: nn.Module, run_calibration: Callable[[], None]) -> list[dict[str, torch.Tensor]]:
    """Per layer, each linear's largest |input| per channel [in_features] float32 over the calibration run."""
    maxima: list[dict[str, torch.Tensor]] = [{} for _ in model.model.layers]
    handles = []
    for i, layer in enumerate(model.model.layers):
        for name in LINEARS:
            def hook(module: nn.Module, args: tuple, i: int = i, name: str = name) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float()  # [in_features]
                seen = maxima[i].get(name)
                maxima[i][name] = x if seen is None else torch.maximum(seen, x)
            handles.append(layer.get_submodule(name).register_forward_pre_hook(hook))
    try:
        run_calibration()
    finally:
        for handle in handles:
            handle.remove()
    for i, found in enumerate(maxima):
        if len(found) < len(LINEARS):
            raise LlamarunError(f"calibration never reached layer {i}'s linears", "give a calibration text of some "
                                "tokens, through the float model's own forward")
    return maxima


def smoothing_factors(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """s = x_max^alpha / w_max^(1 - alpha) per channel; 1 where either is zero (a channel never active)."""
    live = (x_max > 0) & (w_max > 0)
    s = x_max.clamp_min(1e-30) ** alpha / w_max.clamp_min(1e-30) ** (1 - alpha)
    return torch.where(live, s, torch.ones_like(s))


def smooth_model(model: nn.Module, run_calibration: Callable[[], None], alpha: float = ALPHA) -> None:
    """Fold SmoothQuant's factors into `model`'s float weights in place (see the module docstring)."""
    if not 0.0 <= alpha <= 1.0:
        raise LlamarunError(f"smoothing strength {alpha} is outside 0..1", "0.5 is the usual value")
    for name in LINEARS:
        if not isinstance(model.model.layers[0].get_submodule(name), nn.Linear):
            raise LlamarunError("SmoothQuant folds into float weights, and this model's linears are already packed",
                                "load the model with --weights exact, then smooth, then quantize")
    maxima = input_maxima(model, run_calibration)
    config = model.config
    q, kv, hd = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim, config.head_dim
    group = config.num_heads // config.num_kv_heads
    for layer, found in zip(model.model.layers, maxima, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        for norm, linear, key in ((layer.input_layernorm, attn.qkv_proj, "self_attn.qkv_proj"),
                                  (layer.post_attention_layernorm, mlp.gate_up_proj, "mlp.gate_up_proj")):
            s = smoothing_factors(found[key], _column_max(linear.weight), alpha)
            _scale(norm.weight, 1 / s)
            _scale(linear.weight, s[None, :])
        inter = mlp.down_proj.in_features
        s = smoothing_factors(found["mlp.down_proj"], _column_max(mlp.down_proj.weight), alpha)
        _scale(mlp.gate_up_proj.weight[inter:], 1 / s[:, None])  # the `up` rows
        _scale(mlp.down_proj.weight, s[None, :])
        # o: one factor per value channel, shared by the `group` query heads that read it.
        x_kv = found["self_attn.o_proj"].view(-1, group, hd).amax(1)  # [kv_heads, head_dim]
        w_kv = _column_max(attn.o_proj.weight).view(-1, group, hd).amax(1)
        s = smoothing_factors(x_kv, w_kv, alpha)  # [kv_heads, head_dim]
        _scale(attn.qkv_proj.weight[q + kv:], 1 / s.reshape(-1)[:, None])  # the `v` rows
        _scale(attn.o_proj.weight, s[:, None, :].expand(-1, group, hd).reshape(1, -1))


def smooth_on_text(model: nn.Module, token_ids, *, ctx: int, dtype: torch.dtype, device: str | torch.device,
                   hint: str, alpha: float = ALPHA) -> None:
    """`smooth_model` calibrated by the model's own forward over `token_ids` in windows of `ctx`."""
    from llamarun.quant.calibration import calibration_runner

    run = calibration_runner(model, token_ids, ctx=ctx, dtype=dtype, device=device, method="SmoothQuant", hint=hint)
    smooth_model(model, run, alpha)


def _column_max(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().amax(0).float()  # [in_features]


@torch.no_grad()
def _scale(t: torch.Tensor, factor: torch.Tensor) -> None:
    """t *= factor in float32, rounded once to t's dtype, in place (t may be a row slice of a weight)."""
    t.copy_((t.float() * factor).to(t.dtype))
