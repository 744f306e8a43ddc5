"""One format of a model, loaded for eval through the ordinary loader, and the bytes of its linear weights."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from llamarun.eval.formats import load_options
from llamarun.models.llama import LlamaForCausalLM
from llamarun.quant.modes import with_head
from llamarun.store.resolve import ResolvedModel

MIN_CONTEXT = 16  # the loader's smallest context; eval windows may be shorter


@dataclass
class FormatModel:
    """A loaded format: the model to run and what the report says about it."""

    name: str
    model: LlamaForCausalLM
    dtype: torch.dtype
    device: str
    weights: str  # the loader's weights mode (for "exact" with a dtype, the dtype tells them apart)
    load_seconds: float
    linear_bytes: int


LoadFormat = Callable[[str], FormatModel]


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the linear layers (attention and MLP projections of every layer, and the output head).

    Counted from the tensors the modules hold (parameters and buffers: packed weights, scales, zero
    points), so any quantization method is measured as loaded. A head tied to the embedding table
    counts the table: it is what the head's matmul reads.
    """
    modules = [model.lm_head]
    for layer in model.model.layers:
        modules += [*layer.self_attn.children(), *layer.mlp.children()]
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            key = (tensor.data_ptr(), tensor.device) if tensor.device.type != "meta" else id(tensor)
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


def format_loader(model: ResolvedModel, *, ctx: int, device: str | None = None, progress: bool = False,
                  calibration: Sequence[int] = ()) -> LoadFormat:
    """A function that loads `model` in a named format (eval/formats.py) with a KV cache of one window.

    `calibration`: token ids the GPTQ formats are quantized against (never the evaluated ones).
    """
    from llamarun.llm.loading import load_model

    def load(name: str) -> FormatModel:
        options = load_options(name)
        dtype = getattr(torch, options.pop("dtype")) if "dtype" in options else None
        gptq_group = int(options.pop("gptq")) if "gptq" in options else None
        smooth_mode = options.pop("smooth", None)
        head = options.pop("head", None)
        calibrated = gptq_group is not None or smooth_mode is not None
        if not calibrated:  # an online format: the loader holds the head (quant/modes.py)
            options["weights"] = with_head(options["weights"], head)
        context = max(ctx, MIN_CONTEXT)
        t0 = time.perf_counter()
        loaded = load_model(model, context_length=context, kv_tokens=context, device=device, dtype=dtype,
                            progress=progress, **options)
        net = loaded.engine.runner.model
        weights = loaded.weights
        if gptq_group is not None:
            _gptq(net, calibration, gptq_group, ctx, loaded.dtype, loaded.device, head)
            weights = f"int4-g{gptq_group} gptq"
        if smooth_mode is not None:
            _smooth_then_quantize(net, smooth_mode, calibration, ctx, loaded.dtype, loaded.device, head)
            weights = f"{smooth_mode} smoothquant"
        if calibrated and head is not None:
            weights += f", head {head}"
        return FormatModel(name=name, model=net, dtype=loaded.dtype, device=loaded.device, weights=weights,
                           load_seconds=time.perf_counter() - t0, linear_bytes=linear_weight_bytes(net))

    return load


def _smooth_then_quantize(net: LlamaForCausalLM, mode: str, calibration: Sequence[int], ctx: int, dtype: torch.dtype,
                          device: str, head: str | None = None) -> None:
    """SmoothQuant `net` on `calibration`, then pack every linear (the head as `head` says, else as the plain format
    packs it)."""
    from llamarun.quant.method import replace_submodule
    from llamarun.quant.modes import pack_hook, resolve_weights
    from llamarun.quant.smooth import smooth_on_text

    # fp8 on a CPU fails here
    pack = pack_hook(resolve_weights(with_head(mode, head), device=device, config=net.config))
    smooth_on_text(net, calibration, ctx=ctx, dtype=dtype, device=device, hint=_CALIBRATION_HINT)
    for name in [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]:
        replace_submodule(net, name, pack(net.get_submodule(name)))


_CALIBRATION_HINT = ("the calibration text is what follows the evaluated tokens: evaluate fewer (--max-tokens) or give "
                     "a longer --text")


def _gptq(net: LlamaForCausalLM, calibration: Sequence[int], group: int, ctx: int, dtype: torch.dtype,
          device: str, head: str | None = None) -> None:
    """Quantize `net` in place with GPTQ INT4, calibrated on `calibration` in windows of `ctx` tokens; the head too
    unless `head` names its own format (then it is rounded to nearest in that one, or kept float)."""
    from llamarun.quant.gptq import gptq_on_text
    from llamarun.quant.modes import head_method_for, resolve_weights

    head_method = None
    if head is not None:
        head_method = head_method_for(resolve_weights(with_head(f"int4-g{group}", head), device=device,
                                                      config=net.config))
    gptq_on_text(net, calibration, group, ctx=ctx, dtype=dtype, device=device, hint=_CALIBRATION_HINT,
                 head=head is None)
    if head_method is not None:
        net.lm_head = head_method.pack_linear(net.lm_head)
