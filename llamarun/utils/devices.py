"""Which device and dtype a model runs on, and a clear error for a device this machine cannot run."""

from __future__ import annotations

import torch

from llamarun.errors import LlamarunError


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """The device string, or a clear error when this machine cannot run it."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise LlamarunError(f"unknown device '{device}'", "use cpu or cuda (cuda:N for one of several GPUs)") from None
    kind, index = parsed.type, parsed.index
    if kind == "cuda" and not torch.cuda.is_available():
        raise LlamarunError(f"device '{device}' asked for, but this machine has no usable CUDA GPU",
                            "run on the CPU (--device cpu)")
    if kind not in ("cpu", "cuda"):
        raise LlamarunError(f"device '{device}' is not supported", "use cpu or cuda")
    if kind == "cpu" and index not in (None, 0):  # torch accepts cpu:99 and ignores the number
        raise LlamarunError(f"device '{device}' does not exist: there is one CPU device", "use --device cpu")
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise LlamarunError(f"device '{device}' does not exist: this machine has {count} GPU{'s' * (count != 1)}",
                            f"use cuda:0 to cuda:{count - 1}")
    return device


def default_dtype(device: str) -> torch.dtype:
    # CPUs without bf16 units run float32 matmuls fastest; GPUs run bf16.
    return torch.float32 if device == "cpu" else torch.bfloat16
