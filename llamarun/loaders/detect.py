"""Which checkpoint format a path holds, read from its metadata (never guessed from file names).

- a file is GGUF when it starts with the magic bytes `GGUF`;
- a folder with `config.json` and safetensors is MLX when the config carries MLX quantization
  (`quantization`, or a `quantization_config` without a `quant_method`) and the tensors agree
  (uint32 packed `weight` with `scales` and `biases`); otherwise it is Hugging Face;
- a folder (or its `original/` subfolder) with `params.json` and `consolidated.*.pth` is Meta.
Torch-free: `llamarun show` uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamarun.errors import CheckpointError, ModelNotFoundError, UnsupportedError
from llamarun.loaders.checkpoint import read_json
from llamarun.loaders.hf_folder import read_safetensors_header
from llamarun.utils.paths import user_path

GGUF_MAGIC = b"GGUF"
FORMATS = ("gguf", "hf", "mlx", "meta")


def detect_format(path: str | Path) -> str:
    """One of "gguf", "hf", "mlx", "meta" for the checkpoint at `path`."""
    path = user_path(path)
    if not path.exists():
        raise ModelNotFoundError(f"no such file or folder: {path}", "give a .gguf file or a model folder")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == GGUF_MAGIC:
            return "gguf"
        raise CheckpointError(
            f"{path} is not a GGUF file (wrong magic number)",  # never echo the file's bytes
            "a single-file model must be GGUF; for safetensors or .pth give the folder",
        )
    if (path / "config.json").is_file() and safetensors_files(path):
        return "mlx" if _is_mlx(path) else "hf"
    if meta_folder(path) is not None:
        return "meta"
    if (path / "config.json").is_file():
        raise UnsupportedError(f"{path} has config.json but no .safetensors weights",
                               "llamarun reads safetensors; convert pytorch_model.bin with transformers")
    raise UnsupportedError(
        f"{path} is not a model folder (no config.json with safetensors, "
        "no params.json with consolidated.*.pth)",
        "give a .gguf file, a Hugging Face or MLX folder, or a Meta checkpoint folder",
    )


def meta_folder(path: Path) -> Path | None:
    """The folder holding `params.json` + `consolidated.*.pth`: `path` itself or `path/original`."""
    for folder in (path, path / "original"):
        if (folder / "params.json").is_file() and any(folder.glob("consolidated.*.pth")):
            return folder
    return None


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder, in name order (shards sort in order)."""
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def declared_mlx_quantization(config: dict[str, Any]) -> dict[str, Any] | None:
    """MLX's quantization entry (`bits`, `group_size`) if the config declares one."""
    if not isinstance(config, dict):
        return None
    q = config.get("quantization")
    if isinstance(q, dict) and "bits" in q:
        return q
    q = config.get("quantization_config")
    # Other quantizers (gptq, awq, compressed-tensors, fp8...) name themselves in quant_method.
    if (isinstance(q, dict) and "bits" in q and "group_size" in q and "quant_method" not in q
            and q.get("mode", "affine") == "affine"):
        return q
    return None


def _is_mlx(folder: Path) -> bool:
    if declared_mlx_quantization(read_json(folder / "config.json")) is None:
        return False
    for shard in safetensors_files(folder):
        header = read_safetensors_header(shard)
        for name, info in header.items():
            if not name.endswith(".weight") or info.get("dtype") != "U32":
                continue
            stem = name[: -len(".weight")]
            if f"{stem}.scales" in header and f"{stem}.biases" in header:
                return True
    return False
