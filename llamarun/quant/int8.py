"""INT8: symmetric per-channel int8 weights; W8A8 GEMMs on CUDA, weight-only kernels for decode and on CPUs.

- CUDA, more than 16 tokens: activations are quantized per token to int8 and `torch._int_mm` (cuBLASLt's
  int8 GEMM, which needs M > 16) accumulates in int32; both scales are applied to the result.
- CUDA, up to 16 tokens: weight-only; the int8 weight converts exactly to the activation dtype and the
  per-channel scale is applied to the product.
- CPU, up to `NATIVE_MAX_ROWS` tokens (decode): the native AVX2 kernel (kernels/cpu/gemv_w8a8.c, activations
  quantized in blocks of 32) where it built; otherwise, and for more rows, as follows.
- CPU: PyTorch's `_weight_int8pack_mm` reads int8 weights directly with bfloat16 activations (about 3x
  faster end to end than float32 on the default model, decoding being bound by memory traffic). From
  `PREFILL_ROWS` tokens on, expanding the weight to bfloat16 for one GEMM is about 2x faster, on CPUs
  with bf16 units. The deviation from exact math is measured in tests/quant.
"""

from __future__ import annotations

import torch

from llamarun.quant.layouts import Int8Weight
from llamarun.quant.method import PackedLinear, QuantMethod
from llamarun.quant.rtn import quantize_int8, quantize_tokens_int8

INT_MM_MIN_ROWS = 17  # cuBLASLt's int8 GEMM (torch._int_mm) requires more than 16 rows
PREFILL_ROWS = 64  # CPU: from here on a bf16 GEMM over the expanded weight beats the int8 kernel
NATIVE_MAX_ROWS = 8  # CPU: up to this many rows (decode batches) the native kernel (kernels/cpu) takes them


def _bf16_gemm_is_fast() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


BF16_GEMM = _bf16_gemm_is_fast()


def cpu_kernel_available() -> bool:
    """Whether this PyTorch has the int8 weight-only CPU kernel."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8Linear(PackedLinear):
    """y = x @ (qweight * scale)^T with qweight int8 [N, K] and scale float32 [N]."""

    format = "int8"

    def __init__(self, w: Int8Weight) -> None:
        n, k = w.shape
        super().__init__(k, n)
        self.register_buffer("qweight", w.qweight)  # [N, K] int8
        self.register_buffer("scale", w.scale.float())  # [N]
        on_cpu = w.qweight.device.type == "cpu"
        if on_cpu:  # the CPU kernel takes its scales in the activation dtype (bf16)
            self.register_buffer("scale_bf16", self.scale.to(torch.bfloat16), persistent=False)
        self._int_mm = not on_cpu and n % 8 == 0 and k % 8 == 0

    def layout(self) -> Int8Weight:
        return Int8Weight(qweight=self.qweight, scale=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if x2.is_cuda:
            y = self._cuda(x2)
        elif hasattr(self, "scale_bf16") and cpu_kernel_available():
            y = self._cpu(x2)
        else:
            y = (x2 @ self.qweight.to(x2.dtype).t()) * self.scale.to(x2.dtype)  # [M, N]
        return y.reshape(*shape[:-1], self.out_features)

    def _cuda(self, x2: torch.Tensor) -> torch.Tensor:
        if x2.shape[0] >= INT_MM_MIN_ROWS and self._int_mm:
            xq, xs = quantize_tokens_int8(x2)  # [M, K] int8, [M, 1] float32
            acc = torch._int_mm(xq, self.qweight.t())  # [M, N] int32
            return (acc.float() * xs * self.scale).to(x2.dtype)
        # Weight-only: int8 values are exact in bf16/fp16; decode batches read the int8 bytes once in the
        # same kernels as FP8 (GEMV, skinny tensor-core), larger ones expand the weight for cuBLAS.
        from llamarun.kernels.fp8_matmul import scaled_matmul

        return scaled_matmul(x2, self.layout())  # [M, N]

    def forward_silu_input(self, gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.is_cuda and gate_up.dim() == 2 and gate_up.shape[0] < INT_MM_MIN_ROWS:
            from llamarun.kernels.fp8_matmul import scaled_matmul

            return scaled_matmul(gate_up, self.layout(), silu_input=True)  # [M, N]
        return super().forward_silu_input(gate_up)

    def _cpu(self, x2: torch.Tensor) -> torch.Tensor:
        if x2.shape[0] <= NATIVE_MAX_ROWS and self.in_features % 32 == 0 and x2.dtype == torch.float32:
            from llamarun.kernels.cpu import build

            native = build.load()
            if native is not None:  # decode: the AVX2 integer kernel, 2-3x PyTorch's on the default model's shapes
                return native(x2, self.qweight, self.scale)  # [M, N]
        xb = x2.to(torch.bfloat16)  # [M, K]
        if BF16_GEMM and xb.shape[0] >= PREFILL_ROWS:
            weight = self.qweight.to(torch.bfloat16) * self.scale_bf16[:, None]  # [N, K]
            y = xb @ weight.t()  # [M, N]
        else:
            y = torch.ops.aten._weight_int8pack_mm(xb, self.qweight, self.scale_bf16)  # [M, N]
        return y.to(x2.dtype)


class Int8Method(QuantMethod):
    """INT8 with per-channel weight scales: W8A8 (per-token activations) on CUDA, weight-only elsewhere."""

    name = "int8"

    def quantize(self, weight: torch.Tensor) -> Int8Weight:
        return quantize_int8(weight)

    def create(self, layout: Int8Weight) -> Int8Linear:
        if not isinstance(layout, Int8Weight):
            raise TypeError(f"int8 takes an Int8Weight, not {type(layout).__name__}")
        return Int8Linear(layout)

    def packed_bytes(self, out_features: int, in_features: int, scale_bytes: int) -> int:
        return out_features * in_features + 4 * out_features
