"""y = x @ W^T with W held as `Int4Weight` (4-bit, affine groups): the W4A16 matmul on GPUs.

Decode batches of up to 4 to 8 rows, by the weight's shape (`int4_gemv.rows_for`), run the integer GEMV
(`kernels/int4_gemv.py`); up to 16 rows run `skinny_matmul`, which reads each packed byte once on the tensor cores;
more rows expand the weight to the activation dtype and run cuBLAS (`kernels/dequantize.py` says
why that wins once the matmul is bound by arithmetic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llamarun.kernels.dequantize import dequantize_to
from llamarun.kernels.int4_gemv import Planes, gemv_int4_planes, rows_for
from llamarun.kernels.skinny_matmul import MAX_ROWS, skinny_matmul
from llamarun.quant.layouts import Int4Weight


def int4_matmul(x: torch.Tensor, w: Int4Weight, out: torch.Tensor | None = None,
                silu_input: bool = False, planes: Planes | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16) @ dequantize(w)^T -> [M, N] in x's dtype.

    With `silu_input`, x is the merged gate/up output [M, 2K], read as silu(gate) * up. `planes`: x's INT4
    activation planes, when the kernel that wrote x made them (the GEMV's rows only).
    """
    if x.shape[0] <= rows_for(w.qweight.shape[0], w.qweight.shape[1] * 2):
        return gemv_int4_planes(x, w.qweight, w.scales, w.mins, w.group_size, out=out, silu_input=silu_input,
                                planes=planes)
    if x.shape[0] <= MAX_ROWS:
        return skinny_matmul(x, w.qweight, w.scales, w.mins, w.group_size, out=out, silu_input=silu_input)
    if silu_input:
        from llamarun.kernels.activation import silu_and_mul

        x = silu_and_mul(x)
    y = F.linear(x, dequantize_to(w, x.dtype))
    return y if out is None else out.copy_(y)
