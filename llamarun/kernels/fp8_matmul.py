"""y = x @ W^T with W held as `Fp8Weight` and x unquantized: the FP8 weight-only matmul on GPUs.

Batch-1 decode runs a register GEMV: float8 weights `kernels/fp8_gemv.py` (words of four weights),
int8 weights `kernels/gemv.py`'s float tile; up to 16 rows run `skinny_matmul`,
which reads the float8 bytes once and applies the channel
scale per output; more rows expand the weight and run cuBLAS (the quantization method prefers
`torch._scaled_mm` with per-token activation scales, W8A8, for large prefills; this is the
weight-only path, exact to the reference dequantization).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from llamarun.kernels.dequantize import dequantize_to
from llamarun.kernels.fp8_gemv import gemv_fp8
from llamarun.kernels.gemv import gemv_scaled
from llamarun.kernels.skinny_matmul import MAX_ROWS, skinny_matmul
from llamarun.quant.layouts import Fp8Weight, Int8Weight

# "tile" sends float8 weights to gemv.py's float tile as before (benchmarks compare the two end to end).
FP8_GEMV = os.environ.get("LLAMARUN_FP8_GEMV", "words").strip().lower()


def fp8_matmul(x: torch.Tensor, w: Fp8Weight, out: torch.Tensor | None = None,
               silu_input: bool = False) -> torch.Tensor:
    """x [M, K] (bf16/fp16) @ dequantize(w)^T -> [M, N] in x's dtype; `silu_input` as in `int4_matmul`."""
    return scaled_matmul(x, w, out, silu_input)


def scaled_matmul(x: torch.Tensor, w: Fp8Weight | Int8Weight, out: torch.Tensor | None = None,
                  silu_input: bool = False) -> torch.Tensor:
    """The weight-only product for any 8-bit weight with a channel scale: float8 here, int8 for the INT8 method
    (its values are exact in bf16, so the same kernels read it)."""
    weight = w.weight if isinstance(w, Fp8Weight) else w.qweight
    scale = w.scale.reshape(-1)
    if x.shape[0] == 1:
        if (FP8_GEMV != "tile" and weight.dtype == torch.float8_e4m3fn and x.shape[1] % 16 == 0
                and weight.stride(0) % 4 == 0
                and weight.stride(-1) == 1 and weight.storage_offset() % 4 == 0):
            return gemv_fp8(x, weight, scale, out=out, silu_input=silu_input)
        return gemv_scaled(x, weight, scale, out=out, silu_input=silu_input)
    if x.shape[0] <= MAX_ROWS:
        return skinny_matmul(x, weight, scale, out=out, silu_input=silu_input)
    if silu_input:
        from llamarun.kernels.activation import silu_and_mul

        x = silu_and_mul(x)
    y = F.linear(x, dequantize_to(w, x.dtype))
    return y if out is None else out.copy_(y)
