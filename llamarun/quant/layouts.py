"""The packed weight layouts every quantized path agrees on: loaders write them, kernels read them.

One layout per family, chosen so that every format we load maps onto it exactly where it can:

- **INT4 (W4A16)**: `w[n, k] = q[n, k] * scales[n, k // G] + mins[n, k // G]` with q unsigned 0..15.
  The affine "scale and minimum" form covers AWQ/GPTQ (`mins = -zero * scale`), GGUF Q4_0
  (`mins = -8 * d`), Q4_1 (`mins = m`), Q4_K at G=32 (`scales = d * sc`, `mins = -dmin * m`) and
  MLX (`scales`, `biases`) without re-quantizing. Two weights share a byte along K (low nibble = even
  k), rows stay contiguous along K so a decode kernel streams each row's bytes once, in order.
- **FP8 (W8A8 / weight-only)**: `w[n, k] = weight[n, k] * scale[n]` with weight float8_e4m3fn and a
  float32 scale per output channel (a one-element scale means per tensor).
- **INT8 (W8A8 / weight-only)**: `w[n, k] = qweight[n, k] * scale[n]`, symmetric int8, float32 scale.

These are plain dataclasses of tensors: the quantization methods hold them, the converters from
checkpoint formats produce them, and `dequantize` is the reference every kernel is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llamarun.errors import LlamarunError

FP8_MAX = 448.0  # largest finite float8_e4m3fn


@dataclass
class Int4Weight:
    """Unsigned 4-bit weights, two per byte along K, with a float scale and minimum per group of G inputs."""

    qweight: torch.Tensor  # [N, K // 2] uint8; byte j holds k = 2j (low nibble) and k = 2j + 1 (high nibble)
    scales: torch.Tensor  # [N, K // G] float16, bfloat16 or float32
    mins: torch.Tensor  # [N, K // G], same dtype as scales
    group_size: int

    def __post_init__(self) -> None:
        n, half_k = self.qweight.shape
        k = 2 * half_k
        if self.qweight.dtype != torch.uint8:
            raise LlamarunError(f"int4 qweight must be uint8, not {self.qweight.dtype}")
        if self.group_size <= 0 or k % self.group_size:
            raise LlamarunError(f"int4 group size {self.group_size} does not divide the input size {k}",
                                "use a group size that divides it (32, 64 or 128)")
        expected = (n, k // self.group_size)
        for name in ("scales", "mins"):
            t = getattr(self, name)
            if tuple(t.shape) != expected:
                raise LlamarunError(f"int4 {name} have shape {tuple(t.shape)}, expected {expected} "
                                    f"for a [{n}, {k}] weight in groups of {self.group_size}")
        if self.scales.dtype != self.mins.dtype:
            raise LlamarunError(f"int4 scales ({self.scales.dtype}) and mins ({self.mins.dtype}) differ in dtype")

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of the weight this stands for."""
        return self.qweight.shape[0], 2 * self.qweight.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.mins))


@dataclass
class Fp8Weight:
    """float8_e4m3fn weights with a float32 scale per output channel (or one for the whole tensor)."""

    weight: torch.Tensor  # [N, K] float8_e4m3fn
    scale: torch.Tensor  # [N] or [1] float32

    def __post_init__(self) -> None:
        if self.weight.dtype != torch.float8_e4m3fn:
            raise LlamarunError(f"fp8 weight must be float8_e4m3fn, not {self.weight.dtype}")
        if self.scale.numel() not in (1, self.weight.shape[0]):
            raise LlamarunError(f"fp8 scale has {self.scale.numel()} entries; a [{self.weight.shape[0]}, "
                                f"{self.weight.shape[1]}] weight takes 1 (per tensor) or {self.weight.shape[0]}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def nbytes(self) -> int:
        return self.weight.numel() + self.scale.numel() * self.scale.element_size()


@dataclass
class Int8Weight:
    """Symmetric int8 weights with a float32 scale per output channel."""

    qweight: torch.Tensor  # [N, K] int8
    scale: torch.Tensor  # [N] float32

    def __post_init__(self) -> None:
        if self.qweight.dtype != torch.int8:
            raise LlamarunError(f"int8 qweight must be int8, not {self.qweight.dtype}")
        if self.scale.numel() != self.qweight.shape[0]:
            raise LlamarunError(f"int8 scale has {self.scale.numel()} entries, expected {self.qweight.shape[0]}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)

    def nbytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * self.scale.element_size()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, K] integers 0..15 -> [N, K // 2] uint8, even k in the low nibble."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[N, K // 2] uint8 -> [N, K] uint8 values 0..15 (the inverse of `pack_nibbles`)."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


def dequantize(w: Int4Weight | Fp8Weight | Int8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference [N, K] float weight (computed in float32, then cast to `dtype`)."""
    if isinstance(w, Int4Weight):
        q = unpack_nibbles(w.qweight).float()  # [N, K]
        scales = w.scales.float().repeat_interleave(w.group_size, dim=1)  # [N, K]
        mins = w.mins.float().repeat_interleave(w.group_size, dim=1)  # [N, K]
        return (q * scales + mins).to(dtype)
    if isinstance(w, Fp8Weight):
        scale = w.scale.float().reshape(-1, 1)  # [N or 1, 1]
        return (w.weight.float() * scale).to(dtype)
    if isinstance(w, Int8Weight):
        return (w.qweight.float() * w.scale.float()[:, None]).to(dtype)
    raise TypeError(f"not a packed weight: {type(w).__name__}")
