"""What the model listing endpoints say about stored and loaded models, in Ollama's vocabulary.

Torch-free: everything comes from store manifests and checkpoint metadata (`describe_model`), which
is cached per file, so `/api/tags` stays fast however often a chat page polls it.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamarun.errors import LlamarunError, ModelNotFoundError
from llamarun.store.describe import ModelInfo, describe_model, format_parameters
from llamarun.store.home import Manifest, ModelStore
from llamarun.store.model_defaults import ModelDefaults

if TYPE_CHECKING:
    from llamarun.llm.served import ServedModel


@dataclass(frozen=True)
class ModelEntry:
    """A pulled model as the listing endpoints show it."""

    name: str
    path: Path
    format: str
    size: int
    modified_at: float
    digest: str


def resolve(name: str, store: ModelStore | None = None) -> Any:
    """`resolve_model(name, pull=False)`; a name no file system holds (NUL, `~nosuchuser`) is not found."""
    from llamarun.store.resolve import resolve_model

    try:
        return resolve_model(name, pull=False, store=store)
    except (ValueError, OSError, RuntimeError) as err:
        raise ModelNotFoundError(f"model '{name[:200]}' not found ({err})", "see `llamarun list`") from None


def rfc3339(ts: float) -> str:
    """Unix time -> `2024-05-01T12:00:00.123456Z` (Go's time.Time JSON form, which clients parse)."""
    if ts >= 253402300799:  # past year 9999: datetime's limit
        return "9999-12-31T23:59:59Z"
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.isoformat().replace("+00:00", "Z")


def digest(manifest: Manifest) -> str:
    """A sha256 naming the model's content: the file's own hash when it is one file, else of the list."""
    if len(manifest.files) == 1 and manifest.files[0].sha256:
        return manifest.files[0].sha256
    blob = json.dumps([(f.path, f.size, f.sha256) for f in manifest.files] or [manifest.path], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def list_entries(store: ModelStore | None = None) -> list[ModelEntry]:
    """Every pulled model whose files are present, newest first."""
    entries = []
    for m in (store or ModelStore()).list():
        if m.model_path.exists():
            entries.append(ModelEntry(m.ref, m.model_path, m.format, m.size, m.pulled_at, digest(m)))
    return entries


def describe(path: Path, fmt: str) -> ModelInfo | None:
    """`describe_model`, cached while the file is unchanged; None when the metadata is unreadable."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _describe_cached(str(path), fmt, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _describe_cached(path: str, fmt: str, _mtime: int, _size: int) -> ModelInfo | None:
    try:
        return describe_model(Path(path), fmt)
    except (LlamarunError, OSError, ValueError):
        return None


def details(info: ModelInfo | None, fmt: str) -> dict[str, Any]:
    """Ollama's `details` object."""
    family = info.architecture if info else "llama"
    return {"parent_model": "", "format": fmt, "family": family, "families": [family],
            "parameter_size": format_parameters(info.parameters) if info else "unknown",
            "quantization_level": info.quantization if info else "unknown"}


def loaded_details(model: ServedModel) -> dict[str, Any]:
    """`details` of a loaded model, from its config and checkpoint."""
    return {"parent_model": "", "format": model.format, "family": "llama", "families": ["llama"],
            "parameter_size": format_parameters(model.config.num_parameters),
            "quantization_level": model.quantization}


def model_info(info: ModelInfo) -> dict[str, Any]:
    """Ollama's `model_info` map (GGUF-style keys)."""
    arch = info.architecture
    out: dict[str, Any] = {"general.architecture": arch, "general.parameter_count": info.parameters,
                           f"{arch}.context_length": info.context_length,
                           f"{arch}.embedding_length": info.embedding_length}
    cfg = info.config
    if cfg is not None:
        out |= {f"{arch}.block_count": cfg.num_layers, f"{arch}.attention.head_count": cfg.num_heads,
                f"{arch}.attention.head_count_kv": cfg.num_kv_heads,
                f"{arch}.feed_forward_length": cfg.intermediate_size,
                f"{arch}.rope.freq_base": cfg.rope_theta,
                f"{arch}.attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
                f"{arch}.vocab_size": cfg.vocab_size}
    return {k: v for k, v in out.items() if v is not None}


def modelfile(name: str, path: Path, info: ModelInfo | None, settings: ModelDefaults | None = None) -> str:
    """An Ollama-style Modelfile describing the model (a created model's settings included)."""
    s = settings or ModelDefaults()
    lines = ['# Modelfile generated by "llamarun show"', f"# To build on it, use FROM {name}", "",
             f"FROM {path}"]
    template = s.template or (info.chat_template if info else None)
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if s.system:
        lines.append(f'SYSTEM """{s.system}"""')
    for key, value in s.parameters.items():
        lines += [f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}"
                  for v in (value if isinstance(value, list) else [value])]
    lines += [f'MESSAGE {m["role"]} """{m["content"]}"""' for m in s.messages]
    license_ = s.license or (info.license if info else None)
    if license_:
        lines.append(f'LICENSE """{license_}"""')
    return "\n".join(lines) + "\n"
