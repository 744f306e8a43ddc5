"""INT4 W4A16: 4-bit weights in groups of G inputs with a scale and minimum each; activations stay 16-bit.

- CUDA: the Triton kernel `llamarun.kernels.int4_matmul` reads the packed layout as it is.
- CPU: PyTorch's `_weight_int4pack_mm_for_cpu` (measured 13x faster than expanding the weight for a
  decode step, 4x for a 64-token chunk, on a 2048x2048 layer). It wants its own nibble order and a
  `[K/G, N, 2]` table of (scale, zero) with `w = (q - 8) * scale + zero`, i.e. `zero = min + 8 * scale`,
  so the module repacks once when it is created. Its vectorized path is the bfloat16 one: with float16
  or float32 activations it ran 9-13x slower than with bfloat16 (AMD EPYC, AVX2, SmolLM2-135M shapes),
  slower than int8, so the table is kept in bfloat16 and activations are cast to it, as int8 does.
  Shapes it cannot take (N not a multiple of 16, group sizes outside 32..256) run the reference:
  expand to the activation dtype, then matmul.
- CPU, float32 activations, where the native kernels built (K and G multiples of 32): up to `NATIVE_MAX_ROWS`
  rows (decode) the AVX2 W4A8 GEMV (kernels/cpu/gemv_w4a8.c), more rows (prompt chunks) the tiled GEMM
  (kernels/cpu/gemm_w4a8.c), both on one copy of the weights, the records made once here, and both quantizing
  activations alike (16-bit integers per block of 32), so a prompt and a decode step agree. The GEMM ran the
  default model's prompt linears 2.4x faster than PyTorch's int4 kernel on a 2-core EPYC (191 rows), and not making
  PyTorch's packing saves its copy (0.5 bytes per weight and a table) and its repacking at load.
  `LLAMARUN_CPU_PROMPT_GEMM=off` keeps PyTorch's packing and kernel for prompts (a second copy of the
  weights), for A/B measurements.
"""

from __future__ import annotations

import functools
import os

import torch

from llamarun.quant.layouts import Int4Weight, dequantize, pack_nibbles
from llamarun.quant.method import PackedLinear, QuantMethod
from llamarun.quant.rtn import INT4_GROUP_SIZES, quantize_int4

CPU_GROUP_SIZES = (32, 64, 128, 256)
CPU_DTYPE = torch.bfloat16  # the CPU kernel's fast activation and table dtype (see the module docstring)
NATIVE_MAX_ROWS = 8  # CPU: up to this many rows (decode batches) the native GEMV (kernels/cpu) takes them
PROMPT_GEMM_ENV = "LLAMARUN_CPU_PROMPT_GEMM"  # auto (default) | off: prompts on PyTorch's int4 kernel instead


def _native_kernel(n: int, k: int, group_size: int) -> bool:
    """Whether the native W4A8 kernel built here and takes this shape."""
    from llamarun.kernels.cpu import build, w4a8_layout

    return w4a8_layout.fits(n, k, group_size) and build.load_w4a8() is not None


def _native_gemm() -> bool:
    """Whether prompt rows go to the native GEMM (so PyTorch's packing is not needed): built and not switched off."""
    from llamarun.kernels.cpu import build

    return (os.environ.get(PROMPT_GEMM_ENV, "auto").strip().lower() != "off"
            and build.load_gemm_w4a8() is not None)


def _cpu_kernel_takes(n: int, group_size: int) -> bool:
    return (hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and n % 16 == 0
            and group_size in CPU_GROUP_SIZES)


@functools.lru_cache(maxsize=16)
def _cpu_nibble_sources(n: int, k: int) -> torch.Tensor:
    """For each nibble of the CPU kernel's packing of an [n, k] weight, the flat index of its source value.

    The kernel's order is not documented, so it is found by packing the index of every value one hex
    digit at a time: output nibble j of pass d holds digit d of its source index.
    """
    index = torch.arange(n * k, dtype=torch.int64).reshape(n, k)  # [n, k]
    sources = torch.zeros(n * k, dtype=torch.int64)
    digits = max(1, ((n * k - 1).bit_length() + 3) // 4)
    for d in range(digits):
        digit = ((index >> (4 * d)) & 15).to(torch.int32)  # [n, k]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digit, 1)  # [n, k // 2] uint8
        nibbles = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(-1).to(torch.int64)  # [n * k]
        sources |= nibbles << (4 * d)
    return sources


class Int4Linear(PackedLinear):
    """y = x @ dequantize(w)^T for an `Int4Weight` (q * scale + min in groups of G along K)."""

    format = "int4"

    def __init__(self, w: Int4Weight) -> None:
        n, k = w.shape
        super().__init__(k, n)
        self.group_size = w.group_size
        self.format = f"int4-g{w.group_size}"
        self.register_buffer("scales", w.scales)  # [N, K // G]
        self.register_buffer("mins", w.mins)  # [N, K // G]
        on_cpu = w.qweight.device.type == "cpu"
        self._native = on_cpu and _native_kernel(n, k, w.group_size)
        self._native_gemm = self._native and _native_gemm()  # every row count native: no PyTorch packing
        self._cpu_kernel = on_cpu and not self._native_gemm and _cpu_kernel_takes(n, w.group_size)
        if self._native:
            from llamarun.kernels.cpu.w4a8_layout import to_records

            self.register_buffer("records", to_records(w), persistent=False)  # [N / 4, K / 32, 96] uint8
        if self._cpu_kernel:
            from llamarun.quant.layouts import unpack_nibbles

            q = unpack_nibbles(w.qweight).to(torch.int32)  # [N, K]
            self.register_buffer("qweight_cpu", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
            zeros = w.mins.float() + 8.0 * w.scales.float()  # [N, K // G]
            table = torch.stack((w.scales.float().t(), zeros.t()), dim=-1)  # [K // G, N, 2]
            self.register_buffer("scales_and_zeros", table.to(CPU_DTYPE).contiguous(), persistent=False)
        elif not self._native:
            self.register_buffer("qweight", w.qweight)  # [N, K // 2] uint8

    def layout(self) -> Int4Weight:
        if self._native:  # undo the native kernel's records
            from llamarun.kernels.cpu.w4a8_layout import qweight_of

            qweight = qweight_of(self.records, self.out_features)
        elif self._cpu_kernel:  # undo the CPU kernel's nibble order
            n, k = self.out_features, self.in_features
            packed = self.qweight_cpu
            nibbles = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(-1)  # [n * k] in kernel order
            q = torch.empty(n * k, dtype=torch.uint8)
            q[_cpu_nibble_sources(n, k)] = nibbles
            qweight = pack_nibbles(q.reshape(n, k))
        else:
            qweight = self.qweight
        return Int4Weight(qweight=qweight, scales=self.scales, mins=self.mins, group_size=self.group_size)

    def nbytes(self) -> int:
        n, k = self.out_features, self.in_features
        return n * k // 2 + 2 * self.scales.numel() * self.scales.element_size()

    _given_planes = None  # (x, its activation planes) from the norm that wrote x (`give_planes`)

    def planes_group(self, x: torch.Tensor) -> int | None:
        """The group size of the INT4 activation planes this layer's GPU decode kernel would make of x, so that
        the kernel writing x can write them instead (`layers.fused.add_rms_norm`); None if it would make none."""
        from llamarun.kernels.int4_gemv import rows_for

        if (x.is_cuda and x.dim() == 2 and x.shape[0] <= rows_for(self.out_features, self.in_features)
                and x.shape[1] == self.in_features):
            return self.group_size
        return None

    def give_planes(self, x: torch.Tensor, planes: tuple) -> None:
        """x's planes, made by the kernel that wrote x; the next forward of this very tensor uses them."""
        self._given_planes = (x, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # [M, K]
        if x2.is_cuda:
            from llamarun.kernels.int4_matmul import int4_matmul

            given, self._given_planes = self._given_planes, None
            planes = given[1] if given is not None and given[0] is x else None  # never another tensor's
            y = int4_matmul(x2, self.layout(), planes=planes)  # [M, N]
        elif self._native and x2.shape[0] <= NATIVE_MAX_ROWS and x2.dtype == torch.float32:
            from llamarun.kernels.cpu import build

            y = build.load_w4a8()(x2, self.records, self.out_features)  # [M, N]
        elif self._native_gemm:  # prompt rows, or activations of another dtype (computed in float32)
            from llamarun.kernels.cpu import build

            y = build.load_gemm_w4a8()(x2.float(), self.records, self.out_features).to(x2.dtype)  # [M, N]
        elif self._cpu_kernel:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(CPU_DTYPE).contiguous(), self.qweight_cpu, self.group_size,
                self.scales_and_zeros).to(x2.dtype)  # [M, N]
        else:
            y = x2 @ dequantize(self.layout(), x2.dtype).t()  # [M, N], the reference
        return y.reshape(*shape[:-1], self.out_features)


    def forward_silu_input(self, gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.is_cuda and gate_up.dim() == 2:
            from llamarun.kernels.int4_matmul import int4_matmul

            return int4_matmul(gate_up, self.layout(), silu_input=True)  # [M, N]
        return super().forward_silu_input(gate_up)


class Int4Method(QuantMethod):
    """INT4 weight-only (W4A16), asymmetric, group size 128 or 64 online (32 for GGUF blocks)."""

    def __init__(self, group_size: int = 128) -> None:
        if group_size not in INT4_GROUP_SIZES:
            from llamarun.errors import LlamarunError

            raise LlamarunError(f"int4 group size {group_size} is not supported",
                                f"use {' or '.join(str(g) for g in INT4_GROUP_SIZES[:2])}")
        self.group_size = group_size
        self.name = f"int4-g{group_size}"

    def quantize(self, weight: torch.Tensor) -> Int4Weight:
        return quantize_int4(weight, self.group_size)

    def create(self, layout: Int4Weight) -> Int4Linear:
        if not isinstance(layout, Int4Weight):
            raise TypeError(f"int4 takes an Int4Weight, not {type(layout).__name__}")
        return Int4Linear(layout)

    def packed_bytes(self, out_features: int, in_features: int, scale_bytes: int) -> int:
        groups = out_features * (in_features // self.group_size)
        return out_features * in_features // 2 + 2 * groups * scale_bytes
