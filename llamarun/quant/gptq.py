"""GPTQ: INT4 weights that keep each layer's outputs on calibration text, not just its weights, close.

Round-to-nearest (rtn.py) rounds every weight on its own. GPTQ (Frantar et al., 2022) rounds the input
columns of a linear layer one at a time and moves each rounding error onto the columns not yet rounded,
weighted by the inverse Hessian H = 2 X^T X / n of the layer's inputs X, so the errors cancel in the
product `X W^T` where the inputs are correlated. The result is the same layout as RTN (`Int4Weight`:
groups of G inputs, integer zero points), read by the same kernels and saved the same way.

Layers are calibrated in order: layer l's inputs are collected with layers 0..l-1 already quantized, so
each layer corrects for the error that reaches it. Only one layer's Hessians are held at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from llamarun.errors import LlamarunError
from llamarun.quant.calibration import calibration_runner
from llamarun.quant.layouts import Int4Weight, pack_nibbles
from llamarun.quant.method import replace_submodule
from llamarun.quant.rtn import scale_dtype_for

DAMPING = 0.01  # of the mean Hessian diagonal, added to it: keeps the inverse stable for rarely-used inputs
BLOCK = 128  # columns rounded before their errors are pushed to the rest in one matmul (the paper's lazy batch)


# round_column(col, rest) -> the column's rounded values [N]: `rest` is the current block from column `col` on
# ([N, >= 1], with the errors of the columns before it already spread in), so a quantizer may set a group's range
# from the group's columns as they stand when its first column is reached.
RoundColumn = Callable[[int, torch.Tensor], torch.Tensor]


def gptq_rounding(weight: torch.Tensor, hessian: torch.Tensor, round_column: RoundColumn,
                  damping: float = DAMPING) -> None:
    """GPTQ's loop over the input columns of `weight` [N, K], on any grid: `round_column` rounds (and records) each
    column in order, and its error goes to the columns not yet rounded through the inverse Hessian [K, K]."""
    k = weight.shape[1]
    if hessian.shape != (k, k):
        raise ValueError(f"a Hessian of {tuple(hessian.shape)} does not match a weight of {k} inputs")
    w = weight.detach().to(torch.float32, copy=True)  # [N, K], updated as columns are rounded
    h = hessian.to(device=w.device, dtype=torch.float32, copy=True)  # [K, K]
    dead = torch.diag(h) == 0  # inputs the calibration never saw: their weights cannot matter there
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damping * torch.diag(h).mean() * torch.eye(k, device=w.device)
    # The upper Cholesky factor of H^-1: its rows give each column's error and how it spreads to later ones.
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # [K, K]
    for start in range(0, k, BLOCK):
        end = min(start + BLOCK, k)
        block = w[:, start:end]  # [N, B], a view: updated in place
        errors = torch.empty_like(block)
        hinv = inverse[start:end, start:end]
        for i in range(end - start):
            err = (block[:, i] - round_column(start + i, block[:, i:])) / hinv[i, i]  # [N]
            block[:, i:] -= err[:, None] * hinv[i, i:][None, :]
            errors[:, i] = err
        w[:, end:] -= errors @ inverse[start:end, end:]


def gptq_int4(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, damping: float = DAMPING,
              scale_dtype: torch.dtype | None = None) -> Int4Weight:
    """Weight [N, K] -> Int4Weight in groups of `group_size` inputs, rounded against `hessian` [K, K].

    `scale_dtype`: what the scales are stored in (default: as RTN picks for the weight's dtype); the rounding
    is done against the stored scales, so a checkpoint saved in that dtype is what was optimized.
    """
    n, k = weight.shape
    if group_size <= 0 or k % group_size or BLOCK % group_size:
        raise LlamarunError(f"GPTQ group size {group_size} does not tile an input of {k}", "use 128, 64 or 32")
    dtype = scale_dtype or scale_dtype_for(weight)
    q = torch.empty(n, k, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(n, k // group_size, dtype=torch.float32, device=weight.device)
    zeros = torch.empty_like(scales)

    def round_column(col: int, rest: torch.Tensor) -> torch.Tensor:
        g = col // group_size
        if col % group_size == 0:  # a group's range is set from its columns as they stand now
            scales[:, g], zeros[:, g] = _group_range(rest[:, :group_size], dtype)
        qcol = torch.clamp(torch.round(rest[:, 0] / scales[:, g]) + zeros[:, g], 0, 15)  # [N]
        q[:, col] = qcol.to(torch.uint8)
        return (qcol - zeros[:, g]) * scales[:, g]

    gptq_rounding(weight, hessian, round_column, damping)
    return Int4Weight(qweight=pack_nibbles(q), scales=scales.to(dtype), mins=(-zeros * scales).to(dtype),
                      group_size=group_size)


def _group_range(columns: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) [N] of one group, as RTN picks them: the range includes 0, the zero is an integer."""
    lo = columns.amin(dim=1).clamp(max=0.0)
    hi = columns.amax(dim=1).clamp(min=0.0)
    scale = ((hi - lo) / 15.0).clamp(min=torch.finfo(torch.float32).tiny).to(dtype).float()
    return scale, torch.round(-lo / scale).clamp(0, 15)


class HessianHook:
    """Accumulates 2 X^T X / n over every input row a linear layer sees (a forward pre-hook)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.rows = 0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).to(torch.float32)  # [rows, K]
        total = self.rows + x.shape[0]
        self.h.mul_(self.rows / total).addmm_(x.t(), x, alpha=2.0 / total)
        self.rows = total


def gptq_quantize_model(model: nn.Module, run_calibration: Callable[[], None],
                        create: Callable[[Int4Weight], nn.Module], group_size: int, *, head: bool = True,
                        scale_dtype: torch.dtype | None = None, on_layer: Callable[[int], None] | None = None
                        ) -> None:
    """Replace every decoder layer's linears (then the output head, with `head`) by GPTQ INT4, layer by layer.

    `run_calibration()` runs the model over the calibration text (its outputs are not needed); it is called
    once per layer and once for the head. `create` makes the packed module of a layout (the INT4 method's).
    """
    layers: Sequence[nn.Module] = model.model.layers
    groups = [[f"model.layers.{i}.{name}" for name, m in layer.named_modules() if isinstance(m, nn.Linear)]
              for i, layer in enumerate(layers)]
    if head and isinstance(model.lm_head, nn.Linear):
        groups.append(["lm_head"])
    for index, names in enumerate(groups):
        _quantize_group(model, names, run_calibration, create, group_size, scale_dtype)
        if on_layer is not None:
            on_layer(index)


def _quantize_group(model: nn.Module, names: list[str], run_calibration: Callable[[], None],
                    create: Callable[[Int4Weight], nn.Module], group_size: int, scale_dtype: torch.dtype | None
                    ) -> None:
    modules = {name: model.get_submodule(name) for name in names}
    hooks = {name: HessianHook(m.in_features, m.weight.device) for name, m in modules.items()}
    handles = [m.register_forward_pre_hook(hooks[name]) for name, m in modules.items()]
    try:
        with torch.inference_mode():
            run_calibration()
    finally:
        for handle in handles:
            handle.remove()
    for name, module in modules.items():
        if hooks[name].rows == 0:
            raise LlamarunError(f"calibration never reached {name}", "give a calibration text of some tokens")
        layout = gptq_int4(module.weight, hooks[name].h, group_size, scale_dtype=scale_dtype)
        replace_submodule(model, name, create(layout))


def gptq_on_text(model: nn.Module, token_ids: Sequence[int], group_size: int, *, ctx: int, dtype: torch.dtype,
                 device: str | torch.device, hint: str, head: bool = True, scale_dtype: torch.dtype | None = None,
                 on_layer: Callable[[int], None] | None = None) -> None:
    """`gptq_quantize_model` with the model's own forward over `token_ids` in windows of `ctx` as calibration.

    Too little text is a LlamarunError carrying `hint` (where the caller's text comes from).
    """
    from llamarun.quant.int4 import Int4Method

    run_calibration = calibration_runner(model, token_ids, ctx=ctx, dtype=dtype, device=device, method="GPTQ",
                                         hint=hint)
    gptq_quantize_model(model, run_calibration, Int4Method(group_size).create, group_size, head=head,
                        scale_dtype=scale_dtype, on_layer=on_layer)
