"""Where a weight format's error comes from, by simulation on the CPU: the head, the activations, the weights.

    python benchmarks/cpu_quant_simulation.py [--tokens 2048] [--model smollm2:135m] [--json out.json]

FP8 and INT8 W8A8 run on GPUs only, so this rounds values the way those formats do (FP8 e4m3 or INT8, per output
channel for weights and per token for activations; INT4 in asymmetric groups of 64) and computes in float32 on
the CPU. Each variant is run over the shipped text's first `--tokens` tokens in 512-token windows and compared
with the exact float32 model, as `llamarun eval` compares:
- the head (the tied embedding table, on the default model) quantized like the decoder's linears, or kept float;
- weights only, or W8A8 with activations too;
- with or without SmoothQuant (quant/smooth.py, calibrated on the `--tokens` tokens after the scored ones).

It answers what a real eval cannot separate. Is FP8's loss the 3-bit mantissa or the activations? What does the
head cost? What does smoothing buy? The real formats' figures come from `llamarun eval` on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

Round = Callable[[torch.Tensor], torch.Tensor]


def fp8_rows(x: torch.Tensor) -> torch.Tensor:
    """e4m3 with one scale per row (per output channel of a weight, per token of an activation)."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 448.0
    return (x / scale).to(torch.float8_e4m3fn).float() * scale


def int8_rows(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127.0
    return (x / scale).round().clamp(-127, 127) * scale


def int4_groups(w: torch.Tensor, group: int = 64) -> torch.Tensor:
    """Asymmetric 4-bit groups along the input, a scale and minimum each (the INT4 method's rounding)."""
    n, k = w.shape
    v = w.reshape(n, k // group, group)
    low, high = v.amin(-1, keepdim=True), v.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp_min(1e-12)
    return (((v - low) / scale).round().clamp(0, 15) * scale + low).reshape(n, k)


class Simulated(nn.Module):
    """A linear whose weight was rounded once and whose input is rounded on every call (None: weight-only)."""

    def __init__(self, linear: nn.Linear, weights: Round, activations: Round | None) -> None:
        super().__init__()
        self.weight = weights(linear.weight.detach().float())
        self.activations = activations
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.activations(x) if self.activations is not None else x) @ self.weight.t()


def simulate(model: nn.Module, weights: Round, activations: Round | None, head: bool) -> None:
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, module in list(parent.named_children()):
                if isinstance(module, nn.Linear):
                    setattr(parent, name, Simulated(module, weights, activations))
    if head:
        model.lm_head = Simulated(model.lm_head, weights, activations)


VARIANTS: dict[str, tuple[Round, Round | None]] = {
    "fp8 weights only": (fp8_rows, None),
    "fp8 W8A8": (fp8_rows, fp8_rows),
    "int8 weights only": (int8_rows, None),
    "int8 W8A8": (int8_rows, int8_rows),
    "int4-g64 weights only": (int4_groups, None),
}


@dataclass
class Setup:
    """The exact model, its SmoothQuant copy, the scored windows with their reference log-probs, and the
    calibration tokens (the `--tokens` after the scored ones)."""

    exact: nn.Module
    smoothed: nn.Module
    ids: torch.Tensor
    windows: list[tuple[int, int]]
    reference: list[torch.Tensor]
    calibration: list[int]


def prepare(model_name: str, tokens: int) -> Setup:
    from llamarun.eval.forward import window_logits
    from llamarun.eval.metrics import log_probs
    from llamarun.eval.text import DEFAULT_TEXT, read_text, text_tokens
    from llamarun.llm.loading import load_model
    from llamarun.quant.calibration import calibration_runner
    from llamarun.quant.smooth import smooth_model

    loaded = load_model(model_name, weights="exact", dtype=torch.float32, device="cpu", context_length=512)
    every = torch.tensor(text_tokens(loaded.tokenizer, read_text(DEFAULT_TEXT), 2 * tokens + 2))
    ids, calibration = every[:tokens + 1], every[tokens + 1:].tolist()
    exact = loaded.engine.runner.model
    windows = [(a, min(a + 512, len(ids) - 1)) for a in range(0, len(ids) - 1, 512)]
    with torch.inference_mode():
        reference = [log_probs(window_logits(exact, ids[a:b], torch.float32, "cpu")) for a, b in windows]
    smoothed = copy.deepcopy(exact)
    smooth_model(smoothed, calibration_runner(smoothed, calibration, ctx=512, dtype=torch.float32, device="cpu",
                                              method="SmoothQuant", hint="use fewer --tokens"))
    return Setup(exact, smoothed, ids, windows, reference, calibration)


def score(model: nn.Module, setup: Setup) -> tuple[float, float, int]:
    """(mean KL, top-1 agreement, tokens) of `model` against the exact model over the scored windows."""
    from llamarun.eval.forward import window_logits
    from llamarun.eval.metrics import compare, log_probs

    kl = tokens = agree = 0
    with torch.inference_mode():
        for (a, b), ref in zip(setup.windows, setup.reference, strict=True):
            got = compare(ref, log_probs(window_logits(model, setup.ids[a:b], torch.float32, "cpu")),
                          setup.ids[a + 1:b + 1])
            kl, tokens, agree = kl + got.kl, tokens + got.tokens, agree + got.agree
    return kl / tokens, agree / tokens, tokens


def report(rows: list[dict], variant: str, smooth: bool, head: bool, setup: Setup, model: nn.Module,
           t0: float) -> None:
    """Score `model`, add its row and print it."""
    kl, top1, tokens = score(model, setup)
    row = {"variant": variant, "smoothquant": smooth, "head": "quantized" if head else "float",
           "mean_kl": round(kl, 5), "top1": round(top1, 4), "tokens": tokens,
           "seconds": round(time.perf_counter() - t0, 1)}
    rows.append(row)
    print(f"{variant:22s} {'smoothed' if smooth else '        '} head {row['head']:9s} "
          f"mean KL {row['mean_kl']:.4f}  top-1 {row['top1']:.2%}", flush=True)


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2:135m")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--json", metavar="PATH")
    return ap.parse_args()


def main() -> None:
    args = arguments()
    setup = prepare(args.model, args.tokens)
    rows: list[dict] = []
    for name, (weights, activations) in VARIANTS.items():
        for smooth in ((False, True) if activations is not None else (False,)):
            for head in (True, False):
                t0 = time.perf_counter()
                model = copy.deepcopy(setup.smoothed if smooth else setup.exact)
                simulate(model, weights, activations, head)
                report(rows, name, smooth, head, setup, model, t0)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "tokens": args.tokens, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
