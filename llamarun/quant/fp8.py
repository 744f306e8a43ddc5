"""FP8 W8A8: float8_e4m3fn weights with per-channel scales, activations quantized per token at run time.

On CUDA GPUs with FP8 tensor cores (compute capability 8.9 and up) a batch of more than
`GEMV_MAX_ROWS` tokens runs `torch._scaled_mm`: activations are scaled per token to FP8 and the GEMM
applies both scales in its epilogue. Decode batches of a few tokens are bound by reading the weight,
so they go to the weight-only FP8 GEMV kernel (`llamarun.kernels.fp8_matmul`). Elsewhere the module
computes the reference (`x @ dequantize(w).T`), which exists for tests: `choose_weights` refuses FP8
on a device without FP8 units.
"""

from __future__ import annotations

import torch

from llamarun.quant.layouts import FP8_MAX, Fp8Weight, dequantize
from llamarun.quant.method import PackedLinear, QuantMethod
from llamarun.quant.rtn import quantize_fp8

GEMV_MAX_ROWS = 16  # up to this many tokens the GEMV kernel (weight bytes read once) beats the GEMM
FP8_CAPABILITY = (8, 9)  # Ada and Hopper and later have FP8 tensor cores
ROWWISE_CAPABILITY = (9, 0)  # per-token x per-channel scales in _scaled_mm need Hopper's kernels


def fp8_capable(device: str | torch.device) -> bool:
    """Whether `device` is a CUDA GPU with FP8 tensor cores."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= FP8_CAPABILITY


class Fp8Linear(PackedLinear):
    """y = x @ (weight * scale)^T with float8_e4m3fn weight [N, K] and float32 scale [N] (or [1])."""

    format = "fp8"

    def __init__(self, w: Fp8Weight) -> None:
        n, k = w.shape
        super().__init__(k, n)
        self.register_buffer("weight", w.weight)  # [N, K] float8_e4m3fn
        self.register_buffer("scale", w.scale.float())  # [N] or [1]
        device = w.weight.device
        # _scaled_mm needs both matrix dims in multiples of 16; other shapes take the GEMV kernel.
        self._gemm = fp8_capable(device) and n % 16 == 0 and k % 16 == 0
        self._rowwise = self._gemm and torch.cuda.get_device_capability(device) >= ROWWISE_CAPABILITY
        if self._gemm:
            self.register_buffer("scale_row", self.scale.expand(n).reshape(1, n).contiguous(), persistent=False)
            # Made once: a tensor created inside forward would be allocated in every CUDA graph capture.
            self.register_buffer("one", torch.ones((), device=device), persistent=False)

    def layout(self) -> Fp8Weight:
        return Fp8Weight(weight=self.weight, scale=self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if not x2.is_cuda:
            y = x2 @ dequantize(self.layout(), x2.dtype).t()  # [M, N], the reference
        elif x2.shape[0] <= GEMV_MAX_ROWS or not self._gemm:
            from llamarun.kernels.fp8_matmul import fp8_matmul

            y = fp8_matmul(x2, self.layout())  # [M, N]
        else:
            y = self._scaled_gemm(x2)
        return y.reshape(*shape[:-1], self.out_features)

    def forward_silu_input(self, gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.is_cuda and gate_up.dim() == 2:
            if gate_up.shape[0] <= GEMV_MAX_ROWS:
                from llamarun.kernels.fp8_matmul import fp8_matmul

                return fp8_matmul(gate_up, self.layout(), silu_input=True)  # [M, N]
            if self._rowwise:  # SwiGLU inside the activation quantization: no [M, K] intermediate
                return self._scaled_gemm(gate_up, silu_input=True)
        return super().forward_silu_input(gate_up)

    def _scaled_gemm(self, x2: torch.Tensor, silu_input: bool = False) -> torch.Tensor:
        """x2 [M, K] (or with `silu_input`, gate/up [M, 2K] on Hopper) @ the weight^T through _scaled_mm."""
        if silu_input and not self._rowwise:
            raise ValueError("the SwiGLU input is quantized in the row-wise (Hopper) path only; pass silu(gate) * up")
        if self._rowwise:
            from llamarun.kernels.token_quant import quantize_rows_fp8

            # [M, K] fp8, [M, 1] float32: quantize_tokens_fp8's values
            xq, xs = quantize_rows_fp8(x2.contiguous(), silu_input=silu_input)
            # Row-wise scaling writes bfloat16 only; the weight is [N, K] row-major, i.e. [K, N] column-major.
            y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.scale_row,
                                 out_dtype=torch.bfloat16)  # [M, N]
            return y.to(x2.dtype)
        # Ada (8.9): one scale per operand only, so the activation scale is per tensor and the
        # per-channel weight scale is applied after the GEMM.
        xs = (x2.float().abs().amax() / FP8_MAX).clamp(min=1e-12).reshape(())  # []
        xq = (x2.float() / xs).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)  # [M, K]
        y = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.one, out_dtype=torch.float32)  # [M, N]
        return (y * self.scale_row).to(x2.dtype)


class Fp8Method(QuantMethod):
    """FP8 W8A8 with per-channel weight scales and dynamic per-token activation scales."""

    name = "fp8"

    def quantize(self, weight: torch.Tensor) -> Fp8Weight:
        return quantize_fp8(weight)

    def create(self, layout: Fp8Weight) -> Fp8Linear:
        if not isinstance(layout, Fp8Weight):
            raise TypeError(f"fp8 takes an Fp8Weight, not {type(layout).__name__}")
        return Fp8Linear(layout)

    def packed_bytes(self, out_features: int, in_features: int, scale_bytes: int) -> int:
        return out_features * in_features + 4 * out_features
