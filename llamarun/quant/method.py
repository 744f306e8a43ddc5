"""The quantization method interface: a strategy object that packs a linear layer's weight and runs its matmul.

A method turns a float weight into one of the shared packed layouts (`quantize`, for online
quantization), makes a linear module that holds such a layout (`create`, also what loaders of
pre-quantized checkpoints call), and that module's forward is the method's matmul. The model file
never sees any of it: `models/build.py` swaps each `nn.Linear` for the packed module as soon as its
weight is complete (its `pack` hook: `quant.modes.pack_hook`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight

Layout = Int4Weight | Fp8Weight | Int8Weight


class PackedLinear(nn.Module):
    """A bias-free linear layer whose weight is a packed layout; subclasses hold the tensors as buffers.

    Buffers (not a dataclass attribute) so that `.to(device)` and `state_dict()` see the packed tensors.
    """

    format: str = "packed"

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None:
        """Every packed tensor is held row-major: the kernels address it so, and a checkpoint's converter may
        hand over a transposed view (AWQ's qweight, say), which the GPU kernels would refuse (found by
        `--weights packed` on a GPU). `contiguous()` copies nothing that is already row-major."""
        super().register_buffer(name, tensor.contiguous() if tensor is not None else None, persistent)

    def layout(self) -> Layout:
        """The packed weight in its shared layout (for references, bytes and checkpoint writers)."""
        raise NotImplementedError

    def forward_silu_input(self, gate_up: torch.Tensor) -> torch.Tensor:
        """self(silu(gate) * up) from the merged gate/up output [M, 2K] (`layers.fused.down_projection`).

        GPU subclasses read the activation inside their decode kernel (one launch less per layer);
        this default runs the two steps.
        """
        from llamarun.layers.fused import silu_and_mul

        return self(silu_and_mul(gate_up))

    def nbytes(self) -> int:
        """Bytes the packed weight takes (kernel-private copies such as bf16 scales not counted): what one
        decode step reads."""
        return self.layout().nbytes()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.format}"


class QuantMethod(ABC):
    """A quantization format for linear layers: how to pack a weight and how to multiply by it."""

    name: str

    @abstractmethod
    def quantize(self, weight: torch.Tensor) -> Layout:
        """Pack a float [N, K] weight (online quantization), on the weight's device."""

    @abstractmethod
    def create(self, layout: Layout) -> PackedLinear:
        """A linear module computing `x @ dequantize(layout).T` with this method's kernels."""

    @abstractmethod
    def packed_bytes(self, out_features: int, in_features: int, scale_bytes: int) -> int:
        """Bytes a packed [N, K] weight takes (scales of `scale_bytes` each where the method keeps them in
        the compute dtype): the memory plan and the bytes per decode step use it before anything loads."""

    def pack_linear(self, linear: nn.Linear) -> PackedLinear:
        """Quantize a loaded linear layer and return its packed replacement (the `build_model` hook)."""
        if linear.bias is not None:
            raise ValueError("packed linears carry no bias (Llama has none)")
        return self.create(self.quantize(linear.weight.detach()))

    def __str__(self) -> str:
        return self.name


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where `model`'s submodule `name` (dotted, as named_modules gives it) is: how a packed linear takes
    its float linear's place."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)  # get_submodule("") is the model itself


