"""A GGUF file's tensors with its quantized linear weights kept packed (see quant/convert/gguf.py)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llamarun.config import ModelConfig
from llamarun.loaders.checkpoint import is_linear_weight
from llamarun.loaders.gguf.dequant import load_tensor
from llamarun.loaders.gguf.reader import GGUFFile
from llamarun.loaders.permute import interleaved_to_half_split
from llamarun.quant.convert.gguf import gguf_to_packed
from llamarun.quant.convert.report import PackingReport
from llamarun.quant.convert.result import PackedWeight
from llamarun.quant.convert.rows import map_rows


def hf_row_order(name: str, config: ModelConfig):
    """The row reorder GGUF's q/k weights need for HF's rotary layout, or None for other tensors."""
    if name.endswith("q_proj.weight"):
        return lambda t: interleaved_to_half_split(t, config.num_heads)
    if name.endswith("k_proj.weight"):
        return lambda t: interleaved_to_half_split(t, config.num_kv_heads)
    return None


def packed_gguf_tensors(f: GGUFFile, names: dict[str, str], config: ModelConfig, dtype: torch.dtype,
                        report: PackingReport) -> Iterator[tuple[str, torch.Tensor | PackedWeight]]:
    """(HF name, tensor or packed weight) for `names` (HF name -> GGUF name), counting each in `report`."""
    for name, gguf_name in names.items():
        reorder = hf_row_order(name, config)
        info = f.tensors[gguf_name]
        conversion = None
        if is_linear_weight(name):
            conversion = gguf_to_packed(torch.from_numpy(f.raw(gguf_name)), info.ggml_type, info.shape)
        if conversion is None:
            t = load_tensor(f, gguf_name, dtype)
            yield name, reorder(t) if reorder else t
            continue
        report.record(conversion)
        yield name, map_rows(conversion.weight, reorder) if reorder else conversion.weight
