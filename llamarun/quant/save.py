"""`llamarun quantize`: stream a float checkpoint, quantize its decoder linears, write a compressed-tensors folder.

Tensors are read, quantized and written one at a time into safetensors shards of at most `shard_bytes`,
so memory stays at about one shard. The head and embeddings keep the model dtype (as llm-compressor's
recipes leave them), so vLLM and other compressed-tensors readers load the folder as it is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llamarun.errors import LlamarunError
from llamarun.quant.compressed_tensors import QUANTIZED_LINEARS, quantization_config, to_compressed_tensors

SHARD_BYTES = 4 * 10**9
# Weight files of any format are never copied; the text side (tokenizer, template, license) is.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".msgpack", ".h5", ".npz")
_REWRITTEN = ("config.json", "model.safetensors.index.json")


def is_quantized_linear(name: str) -> bool:
    """Whether an HF tensor name is a decoder linear's weight that the checkpoint stores quantized."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in QUANTIZED_LINEARS and ".layers." in name


def check_source(ckpt: Any) -> None:
    """`quantize` reads Hugging Face checkpoints: checked before any calibration runs (GPTQ, SmoothQuant)."""
    if ckpt.format != "hf":
        raise LlamarunError(f"llamarun quantize reads Hugging Face safetensors checkpoints, not {ckpt.format}",
                            "quantize the model's bf16 Hugging Face repo or folder")


def save_quantized(ckpt: Any, out_dir: Path, fmt: str, *, group_size: int | None = None,
                   dtype: torch.dtype = torch.bfloat16, device: str = "cpu", shard_bytes: int = SHARD_BYTES,
                   on_tensor: Callable[[str], None] | None = None, layouts: dict[str, Any] | None = None,
                   replaced: dict[str, torch.Tensor] | None = None) -> list[Path]:
    """Write `ckpt` (a Hugging Face checkpoint) to `out_dir` quantized as `fmt`; returns the files written.

    `layouts`: packed weights already made (GPTQ's, by checkpoint stem) to write instead of rounding to nearest.
    `replaced`: float tensors by checkpoint name that take the file's place (SmoothQuant's weights and norms);
    a linear among them is quantized from the replacement.
    """
    from safetensors.torch import save_file

    from llamarun.quant.modes import default_int4_group, method_for, weights_mode

    check_source(ckpt)
    if fmt == "int4" and group_size is None:  # as online quantization: 128, or the largest that fits
        group_size = default_int4_group(ckpt.config)
    method = method_for(weights_mode(fmt, group_size))
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    written: list[Path] = []

    def flush() -> None:
        path = out_dir / f"model-{len(written) + 1:05d}.safetensors"
        save_file(shards[-1], str(path), metadata={"format": "pt"})
        written.append(path)
        shards[-1], sizes[-1] = {}, 0

    for name, tensor in ckpt.tensors(dtype):
        if on_tensor is not None:
            on_tensor(name)
        if replaced and name in replaced:
            tensor = replaced[name].to(dtype)
        if is_quantized_linear(name):
            stem = name.removesuffix(".weight")
            layout = layouts[stem] if layouts and stem in layouts else method.quantize(tensor.to(device))
            parts = {f"{stem}.{k}": v.cpu() for k, v in to_compressed_tensors(layout).items()}
        else:
            parts = {name: tensor.contiguous()}
        size = sum(t.numel() * t.element_size() for t in parts.values())
        if sizes[-1] and sizes[-1] + size > shard_bytes:
            flush()
        shards[-1].update(parts)
        sizes[-1] += size
    if shards[-1] or not written:
        flush()
    files = _name_shards(out_dir, written)
    _write_config(ckpt.path, out_dir, fmt, method, dtype)
    return files + [out_dir / "config.json"] + _copy_text_side(ckpt.path, out_dir)


def _name_shards(out_dir: Path, written: list[Path]) -> list[Path]:
    """One file is `model.safetensors`; several are `model-0000i-of-0000n.safetensors` with an index."""
    from safetensors import safe_open

    if len(written) == 1:
        target = out_dir / "model.safetensors"
        written[0].replace(target)
        return [target]
    final, weight_map = [], {}
    for i, path in enumerate(written, 1):
        target = out_dir / f"model-{i:05d}-of-{len(written):05d}.safetensors"
        path.replace(target)
        final.append(target)
        with safe_open(str(target), framework="pt") as f:
            weight_map.update(dict.fromkeys(f.keys(), target.name))
    total = sum(p.stat().st_size for p in final)
    index = out_dir / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return [*final, index]


def _write_config(source: Path, out_dir: Path, fmt: str, method: Any, dtype: torch.dtype) -> None:
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = quantization_config(fmt, getattr(method, "group_size", None))
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _copy_text_side(source: Path, out_dir: Path) -> list[Path]:
    copied = []
    for item in sorted(source.iterdir()):
        if item.is_file() and item.name not in _REWRITTEN and not item.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(item, out_dir / item.name)
            copied.append(out_dir / item.name)
    return copied
