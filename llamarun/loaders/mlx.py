"""MLX (mlx-community) checkpoints: affine group quantization packed into uint32 words.

Each quantized linear stores `weight` (uint32, 32/bits values per word, lowest bits first),
`scales` and `biases` per group of `group_size` inputs: w = scales * q + biases. `tensors` expands
them to the compute dtype; `packed_tensors` keeps 4-bit linears packed (quant/convert/mlx.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llamarun.config import ModelConfig
from llamarun.errors import ConfigMismatchError, UnsupportedError
from llamarun.loaders import hf_folder
from llamarun.loaders.checkpoint import Checkpoint, is_linear_weight, read_json
from llamarun.quant.convert.mlx import mlx_other_bits_to_int8, mlx_to_int4

SUPPORTED_BITS = (2, 4, 8)


def mlx_quantization(cfg: dict[str, Any]) -> dict[str, Any]:
    """The `quantization` block of an MLX config.json (newer mlx-lm also writes `quantization_config`)."""
    quant = cfg.get("quantization") or cfg.get("quantization_config")
    if not isinstance(quant, dict) or "bits" not in quant:
        raise ConfigMismatchError("config.json has no MLX 'quantization' block with 'bits' and 'group_size'")
    return quant


def _layer_settings(quant: dict[str, Any], module: str) -> tuple[int, int]:
    """Bits and group size for one module; mlx-lm may override them per layer."""
    override = quant.get(module)
    source = override if isinstance(override, dict) else quant
    bits, group = int(source.get("bits", quant["bits"])), int(source.get("group_size", quant.get("group_size", 64)))
    if bits not in SUPPORTED_BITS:
        raise UnsupportedError(f"MLX {bits}-bit quantization is not supported",
                               f"supported: {', '.join(map(str, SUPPORTED_BITS))} bits")
    return bits, group


def dequantize_mlx(packed: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
                   bits: int, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """packed [rows, cols*bits/32] uint32, scales/biases [rows, cols/group] -> weights [rows, cols]."""
    rows = packed.shape[0]
    per_word = 32 // bits
    words = packed.view(torch.int32).to(torch.int64)  # int64 so the shift of bit 31 stays positive
    shifts = torch.arange(per_word, dtype=torch.int64) * bits  # [per_word]
    q = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [rows, words, per_word]
    q = q.reshape(rows, -1, group_size).to(torch.float32)  # [rows, groups, group_size]
    if q.shape[1] != scales.shape[1]:
        raise ConfigMismatchError(
            f"MLX tensor has {q.shape[1]} groups but {scales.shape[1]} scales; check group_size in config.json"
        )
    w = scales.float().unsqueeze(-1) * q + biases.float().unsqueeze(-1)  # [rows, groups, group_size]
    return w.reshape(rows, -1).to(dtype)


def open_mlx(folder: Path) -> Checkpoint:
    cfg = read_json(folder / "config.json")
    config = ModelConfig.from_hf(cfg)
    quant = mlx_quantization(cfg)
    files = hf_folder.safetensors_files(folder)
    headers = {f: hf_folder.read_safetensors_header(f) for f in files}
    where = {name: file for file, header in headers.items() for name in header}
    names = [n for n in where if not n.endswith((".scales", ".biases"))]

    def stream(dtype, keep_packed: bool) -> Iterator[tuple[str, object]]:
        from safetensors import safe_open

        handles = {f: safe_open(str(f), framework="pt") for f in files}

        def get(name: str) -> torch.Tensor:
            return handles[where[name]].get_tensor(name)

        for name in names:
            module = name.rsplit(".", 1)[0]
            if f"{module}.scales" not in where:
                yield name, get(name).to(dtype)
                continue
            if f"{module}.biases" not in where:
                raise ConfigMismatchError(f"MLX tensor {module} has scales but no biases")
            bits, group = _layer_settings(quant, module)
            packed, scales, biases = get(name), get(f"{module}.scales"), get(f"{module}.biases")
            pack = keep_packed and is_linear_weight(name)  # embeddings and float paths are expanded
            if not pack:
                yield name, dequantize_mlx(packed, scales, biases, bits, group, dtype)
                continue
            if bits == 4:
                conversion = mlx_to_int4(packed, scales, biases, group)
            else:
                expanded = dequantize_mlx(packed, scales, biases, bits, group, torch.float32)
                conversion = mlx_other_bits_to_int8(expanded, bits, group)
            report.record(conversion)
            yield name, conversion.weight

    from llamarun.quant.convert.plan import describe_plan
    from llamarun.quant.convert.report import PackingReport

    report = PackingReport()
    linear_plan = []
    for name in names:
        module = name.rsplit(".", 1)[0]
        if is_linear_weight(name) and f"{module}.scales" in where:
            bits, group = _layer_settings(quant, module)
            linear_plan.append((f"MLX {bits}-bit g{group}", f"int4 g{group}" if bits == 4 else "int8 per channel",
                                bits == 4))

    return Checkpoint(
        format="mlx", path=folder, config=config, tensor_names=names,
        **hf_folder.text_side(folder),
        quantization=f"MLX {quant['bits']}-bit, group {quant.get('group_size', 64)}", is_quantized=True,
        tensors=lambda dtype: stream(dtype, False), packed_source=lambda dtype: stream(dtype, True),
        packing=report, packing_plan=describe_plan(linear_plan),
    )
