"""The parts of a Hugging Face-style folder that HF and MLX checkpoints share: text side and safetensors index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamarun.errors import CheckpointError
from llamarun.loaders.checkpoint import read_json

if TYPE_CHECKING:
    from llamarun.text.tokenizer import Tokenizer


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files, from `model.safetensors.index.json` when sharded."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map", "re-download the checkpoint")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(folder.glob("*.safetensors"))
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise CheckpointError(f"{folder} lacks weight files: {', '.join(missing[:3])}", "finish the download")
    if not files:
        raise CheckpointError(f"{folder} has no .safetensors files", "is this a Hugging Face checkpoint folder?")
    return files


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (name -> dtype, shape, offsets), checked against the file size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes)", "re-download it")
        header_len = int.from_bytes(raw, "little")
        if header_len > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path} is not a safetensors file (bad header length)", "re-download it")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} has a corrupt safetensors header", "re-download it") from None
    header.pop("__metadata__", None)
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path} is truncated: expected {8 + header_len + end} bytes, found {size}", "re-download it"
        )
    return header


def chat_template(folder: Path) -> str | None:
    """The Jinja chat template: `chat_template.jinja` (newer HF) or tokenizer_config.json's entry."""
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    if not config_path.exists():
        return None
    template = read_json(config_path).get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def generation_config(folder: Path) -> dict[str, Any]:
    path = folder / "generation_config.json"
    return read_json(path) if path.exists() else {}


def text_side(folder: Path) -> dict[str, Any]:
    """The Checkpoint fields an HF-style folder (HF or MLX) fills from its non-weight files."""
    gen = generation_config(folder)
    return {
        "make_tokenizer": lambda: load_folder_tokenizer(folder),
        "chat_template": chat_template(folder),
        "generation_defaults": gen,
        "extra_stop_ids": tuple(generation_stop_ids(gen)),
    }


def generation_stop_ids(gen: dict[str, Any]) -> list[int]:
    eos = gen.get("eos_token_id")
    if isinstance(eos, list):
        return [int(i) for i in eos]
    return [int(eos)] if isinstance(eos, int) else []


def load_folder_tokenizer(folder: Path) -> Tokenizer:
    """tokenizer.json when present (HF and MLX repos), else a Meta tiktoken `tokenizer.model`."""
    if (folder / "tokenizer.json").exists():
        from llamarun.text.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_folder(folder)
    for candidate in (folder / "tokenizer.model", folder / "original" / "tokenizer.model"):
        if candidate.exists():
            from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer

            return TiktokenTokenizer.from_file(candidate)
    raise CheckpointError(f"{folder} has no tokenizer.json or tokenizer.model", "download the tokenizer files too")
