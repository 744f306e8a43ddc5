"""Int8 weight-only linears for CPUs: per-output-channel symmetric int8, bfloat16 activations.

Decoding on a CPU is bound by memory bandwidth: float32 weights cost 4 bytes per parameter per
token, int8 costs one. PyTorch's `_weight_int8pack_mm` CPU kernel reads int8 weights directly
(AVX-512/AVX2) with bfloat16 activations, which is about 3x faster end to end than float32 on the
default model. The price is a small, measured deviation from exact float math (see tests/quant),
smaller than llama.cpp's own 8-bit-activation kernels show against Transformers.
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "int8"
# From this many tokens on (prefill chunks), expanding the int8 weight to bfloat16 and running a bf16
# GEMM is about 2x faster than the int8 kernel, on CPUs with bf16 instructions (AVX512-BF16, AMX).
PREFILL_ROWS = 64


def _bf16_gemm_is_fast() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


BF16_GEMM = _bf16_gemm_is_fast()


class Int8WeightOnlyLinear(nn.Module):
    """y = (x_bf16 @ (q * scale)^T) with q int8 [out, in] and scale bf16 [out]."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()  # [out, in]
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0  # [out]
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # [out, in]
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # [tokens, in]
        if BF16_GEMM and x2.shape[0] >= PREFILL_ROWS:
            weight = self.qweight.to(torch.bfloat16) * self.scale[:, None]  # [out, in], same values to bf16
            y = x2 @ weight.t()  # [tokens, out]
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)  # [tokens, out]
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def pack_int8(linear: nn.Linear) -> nn.Module:
    """The int8 replacement of a loaded linear layer."""
    return Int8WeightOnlyLinear(linear.weight)


def supported_here(device: str) -> bool:
    """The int8 kernel is a CPU kernel (on CUDA, PyTorch's version is slower than bf16 matmuls)."""
    return device == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")
