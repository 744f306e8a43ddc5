"""Does GPTQ's error feedback rescue FP8 on the default model? A CPU simulation beside cpu_quant_simulation.py.

    python benchmarks/cpu_fp8_gptq_simulation.py [--tokens 2048] [--json out.json]

FP8 W8A8's loss on the default model is mostly its e4m3 weights (cpu-quant-simulation-2026-11-30.md). GPTQ rounds
INT4 columns one at a time and pushes each error onto the columns not yet rounded; `quant.gptq.gptq_rounding` runs
the same loop on any grid, here e4m3 with one scale per output channel. Layers are rounded in order, each against
the inputs the already-rounded layers give it, on the `--tokens` tokens after the scored ones; the scoring is
cpu_quant_simulation.py's (mean KL and top-1 against the exact float32 model, 512-token windows).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from cpu_quant_simulation import Round, Simulated, arguments, fp8_rows, prepare, report
from torch import nn


def gptq_fp8(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Weight [N, K] rounded to e4m3 with per-channel scales by GPTQ -> its float values [N, K]."""
    from llamarun.quant.gptq import gptq_rounding

    scale = weight.detach().float().abs().amax(1).clamp_min(1e-12) / 448.0  # [N], from the weight as given
    out = torch.empty(weight.shape, dtype=torch.float32)

    def round_column(col: int, rest: torch.Tensor) -> torch.Tensor:
        out[:, col] = (rest[:, 0] / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale
        return out[:, col]

    gptq_rounding(weight, hessian, round_column)
    return out


class Rounded(nn.Module):
    """A linear with fixed rounded weights, its input rounded on every call (None: weight-only)."""

    def __init__(self, weight: torch.Tensor, activations: Round | None) -> None:
        super().__init__()
        self.weight, self.activations = weight, activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.activations(x) if self.activations is not None else x) @ self.weight.t()


def gptq_model(model: nn.Module, run_calibration, activations: Round | None, head: bool) -> None:
    """Every decoder linear by GPTQ on e4m3, layer by layer; the head by round to nearest when `head`."""
    from llamarun.quant.gptq import HessianHook

    for layer in model.model.layers:
        linears = [(parent, name, m) for parent in (layer.self_attn, layer.mlp)
                   for name, m in parent.named_children() if isinstance(m, nn.Linear)]
        hooks = [HessianHook(m.in_features, m.weight.device) for _, _, m in linears]
        handles = [m.register_forward_pre_hook(hook) for (_, _, m), hook in zip(linears, hooks, strict=True)]
        with torch.inference_mode():
            run_calibration()
        for handle in handles:
            handle.remove()
        for (parent, name, m), hook in zip(linears, hooks, strict=True):
            setattr(parent, name, Rounded(gptq_fp8(m.weight, hook.h), activations))
    if head:
        model.lm_head = Simulated(model.lm_head, fp8_rows, activations)


def main() -> None:
    from llamarun.quant.calibration import calibration_runner

    args = arguments()
    setup = prepare(args.model, args.tokens)
    rows: list[dict] = []
    for variant, activations in (("fp8-gptq weights only", None), ("fp8-gptq W8A8", fp8_rows)):
        for smooth in ((False, True) if activations is not None else (False,)):
            for head in (False, True):
                t0 = time.perf_counter()
                model = copy.deepcopy(setup.smoothed if smooth else setup.exact)
                run = calibration_runner(model, setup.calibration, ctx=512, dtype=torch.float32, device="cpu",
                                         method="GPTQ", hint="use fewer --tokens")
                gptq_model(model, run, activations, head)
                report(rows, variant, smooth, head, setup, model, t0)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "tokens": args.tokens, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
