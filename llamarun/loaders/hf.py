"""Hugging Face safetensors checkpoints, single file or sharded, read through memory maps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llamarun.config import ModelConfig
from llamarun.loaders import hf_folder
from llamarun.loaders.checkpoint import Checkpoint, read_json


def open_hf(folder: Path) -> Checkpoint:
    cfg = read_json(folder / "config.json")
    if cfg.get("quantization_config"):  # AWQ, GPTQ, compressed-tensors (or a clear error naming those)
        from llamarun.loaders.hf_quantized import open_quantized_hf

        return open_quantized_hf(folder, cfg)
    config = ModelConfig.from_hf(cfg)
    files = hf_folder.safetensors_files(folder)
    headers = {f: hf_folder.read_safetensors_header(f) for f in files}
    names = [name for header in headers.values() for name in header]

    def tensors(dtype) -> Iterator[tuple[str, object]]:
        from safetensors import safe_open

        for file, header in headers.items():
            with safe_open(str(file), framework="pt") as f:
                for name in header:
                    yield name, f.get_tensor(name).to(dtype)

    return Checkpoint(
        format="hf", path=folder, config=config, tensor_names=names, tensors=tensors,
        **hf_folder.text_side(folder),
        quantization=str(cfg.get("torch_dtype") or cfg.get("dtype") or "unknown"),
    )
