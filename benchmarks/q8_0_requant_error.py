"""How much re-quantizing GGUF Q8_0 to int8 per channel costs, on the default model's linear weights.

The default model ships in Q4_1; each of its linear weights (expanded exactly) is quantized to Q8_0 with
the gguf package, then converted the way the loader converts Q8_0 files (`quant/convert/gguf.py`).
Prints, over all linears, the relative RMS error of the conversion against the Q8_0 weights, beside
Q8_0's own error against the weights it was made from and a plain max|w|/127 per-channel scale.
Run: PYTHONPATH=. python benchmarks/q8_0_requant_error.py [path.gguf]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from llamarun.loaders.checkpoint import is_linear_weight
from llamarun.loaders.registry import open_checkpoint
from llamarun.quant.convert.gguf import gguf_to_packed


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(path: str) -> None:
    ckpt = open_checkpoint(path)
    ours, plain, q8_own, sizes = [], [], [], []
    for name, w in ckpt.tensors(torch.float32):
        if not is_linear_weight(name):
            continue
        blocks = gguf_quantize(w.numpy(), Q.Q8_0)
        q8 = torch.from_numpy(gguf_dequantize(blocks, Q.Q8_0).reshape(w.shape))
        conv = gguf_to_packed(torch.from_numpy(np.ascontiguousarray(blocks).view(np.uint8).reshape(-1)),
                              int(Q.Q8_0), tuple(w.shape))
        scale = q8.abs().amax(1, keepdim=True).clamp(min=1e-30) / 127
        ours.append(conv.error)
        plain.append(rel(torch.round(q8 / scale) * scale, q8))
        q8_own.append(rel(q8, w))
        sizes.append(w.numel())
    weights = np.array(sizes) / sum(sizes)
    for label, errs in (("Q8_0 -> int8 per channel (ours)", ours), ("plain max|w|/127 per channel", plain),
                        ("Q8_0 itself vs its source", q8_own)):
        e = np.array(errs)
        print(f"{label:34s} mean {100 * (e * weights).sum():.3f}%  max {100 * e.max():.3f}%  over {len(e)} linears")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        from llamarun.store.default_model import ensure_default_model

        main(str(ensure_default_model()))
