"""GPTQ layouts (`llamarun quantize --gptq`) and SmoothQuant's weights (`--smooth`), named as the checkpoint names
its tensors.

The model merges q/k/v and gate/up into one linear each, and GPTQ rounds the merged weight (its parts
share one input, so one Hessian serves them all, and rows never affect each other). A checkpoint keeps
the parts apart, so each part's layout is its row range of the merged one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from llamarun.layers.linear import MergedLinear
from llamarun.quant.layouts import Int4Weight

CALIBRATION_TOKENS = 2048  # four 512-token windows: enough rows for a Hessian of a few thousand inputs


def checkpoint_rows(model: nn.Module) -> dict[str, tuple[str, int, int]]:
    """Checkpoint stem (`model.layers.0.self_attn.q_proj`) -> (model module, first row, last row + 1)."""
    rows = {}
    for name, module in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(module, MergedLinear):
            parent = name.rpartition(".")[0]
            for shard, (start, end) in module.shards.items():
                rows[f"{parent}.{shard}"] = (name, start, end)
        elif isinstance(module, nn.Linear):
            rows[name] = (name, 0, module.out_features)
    return rows


def layouts_by_stem(model: nn.Module, rows: dict[str, tuple[str, int, int]]) -> dict[str, Int4Weight]:
    """Each checkpoint stem's Int4Weight, sliced from the GPTQ-packed module that holds its rows."""
    out = {}
    for stem, (module_name, start, end) in rows.items():
        layout = model.get_submodule(module_name).layout()
        out[stem] = Int4Weight(qweight=layout.qweight[start:end].cpu(), scales=layout.scales[start:end].cpu(),
                               mins=layout.mins[start:end].cpu(), group_size=layout.group_size)
    return out


def gptq_checkpoint_layouts(ckpt: object, token_ids: Sequence[int], group_size: int, device: str,
                            ctx: int = 512, on_layer: object = None) -> dict[str, Int4Weight]:
    """Build `ckpt`'s model exactly, GPTQ its decoder linears on `token_ids`, and return the layouts by stem.

    Scales are rounded to bfloat16 as they are stored; the head stays unquantized, as compressed-tensors
    checkpoints keep it.
    """
    from llamarun.models.build import build_model
    from llamarun.quant.gptq import gptq_on_text

    dtype = torch.float32 if device == "cpu" else torch.bfloat16  # CPUs without bf16 units run float32 faster
    model = build_model(ckpt, dtype, device)  # type: ignore[arg-type]
    rows = checkpoint_rows(model)
    gptq_on_text(model, token_ids, group_size, ctx=ctx, dtype=dtype, device=device,
                 hint="give a longer --calibration text", head=False, scale_dtype=torch.bfloat16,
                 on_layer=on_layer)  # type: ignore[arg-type]
    return layouts_by_stem(model, rows)


def smoothed_checkpoint_tensors(ckpt: object, token_ids: Sequence[int], device: str, ctx: int = 512
                                ) -> dict[str, torch.Tensor]:
    """Build `ckpt`'s model exactly, SmoothQuant it on `token_ids` (quant/smooth.py), and return every tensor that
    smoothing changed by checkpoint name: each decoder linear's weight (its rows of a merged one) and both norms of
    every layer, in float32 on the CPU. The writer quantizes the linears from these."""
    from llamarun.models.build import build_model
    from llamarun.quant.smooth import smooth_on_text

    model = build_model(ckpt, torch.float32, device)  # type: ignore[arg-type]
    smooth_on_text(model, token_ids, ctx=ctx, dtype=torch.float32, device=device,
                   hint="give a longer --calibration text")
    out = {f"{stem}.weight": model.get_submodule(module).weight[start:end].detach().cpu()
           for stem, (module, start, end) in checkpoint_rows(model).items()}
    for i, layer in enumerate(model.model.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"model.layers.{i}.{norm}.weight"] = getattr(layer, norm).weight.detach().cpu()
    return out
