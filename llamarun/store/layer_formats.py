"""What `llamarun show` says about a checkpoint's weights: each layer group's stored format and bytes (no torch).

Groups as in quant/footprint.py: attention linears, MLP linears, head, embedding, norms. A decode step
reads every linear and norm whole, one row of the embedding table per token, and the head whole (the
table itself when the head is tied to it). Read from file headers only: GGUF tensor types and sizes,
safetensors dtypes and offsets plus config.json's quantization entry.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamarun.loaders.checkpoint import read_json

GROUPS = ("attention", "mlp", "head", "embedding", "norms")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj", "attn_q", "attn_k", "attn_v", "attn_output")
_MLP = ("gate_proj", "up_proj", "down_proj", "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class StoredGroup:
    """One layer group as stored: its formats, bytes on disk, and bytes a decode step reads."""

    group: str
    format: str
    bytes: int
    decode_bytes: int


def group_of(name: str) -> str | None:
    """The layer group of an HF, MLX or GGUF tensor name (None for tensors outside the groups)."""
    parts = name.split(".")
    if "lm_head" in parts or parts[0] == "output":
        return "head"
    if "embed_tokens" in parts or parts[0] == "token_embd":
        return "embedding"
    if any(p in _ATTENTION for p in parts):
        return "attention"
    if any(p in _MLP for p in parts):
        return "mlp"
    if any(p.endswith("norm") for p in parts):
        return "norms"
    return None


def stored_layer_groups(path: Path, fmt: str) -> list[StoredGroup] | None:
    """The groups of the checkpoint at `path`, or None where the format's headers do not say (Meta)."""
    if fmt == "gguf":
        from llamarun.loaders.gguf.reader import read_gguf

        tensors = read_gguf(path).tensors
        entries = [(name, t.type_name, t.nbytes, t.shape) for name, t in tensors.items()]
        return _summarize(entries, label=lambda _group, kinds: kinds)
    if fmt in ("hf", "mlx"):
        return _safetensors_groups(path, fmt)
    return None


def _safetensors_groups(folder: Path, fmt: str) -> list[StoredGroup]:
    from llamarun.loaders.hf_folder import read_safetensors_header, safetensors_files

    config = read_json(folder / "config.json")
    quant = config.get("quantization_config") or config.get("quantization")
    entries = []
    for file in safetensors_files(folder):
        for name, info in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            entries.append((name, info["dtype"], end - start, tuple(info["shape"])))
    packed_label = _quant_label(quant, fmt) if isinstance(quant, dict) else None

    def label(group: str, kinds: str) -> str:
        # A group whose tensors include integer or fp8 ones is stored quantized.
        quantized = any(k in kinds for k in ("I32", "U32", "I8", "U8", "F8"))
        return packed_label if quantized and packed_label else kinds

    return _summarize(entries, label=label)


def _quant_label(quant: dict[str, Any], fmt: str) -> str:
    if fmt == "mlx" or "bits" in quant:
        return f"MLX {quant.get('bits')}-bit g{quant.get('group_size', 64)}"
    groups = quant.get("config_groups") or {}
    weights = next(iter(groups.values()), {}).get("weights") or {}
    if weights:
        kind = "fp8" if weights.get("type") == "float" else f"int{weights.get('num_bits')}"
        group = f"-g{weights['group_size']}" if weights.get("group_size") else ""
        return f"{kind}{group} ({quant.get('quant_method', 'quantized')})"
    return str(quant.get("quant_method") or quant.get("format") or "quantized")


def _summarize(entries: list[tuple[str, str, int, tuple[int, ...]]], *, label: Any) -> list[StoredGroup]:
    sizes: dict[str, int] = defaultdict(int)
    kinds: dict[str, set[str]] = defaultdict(set)
    vocab = 1
    for name, kind, nbytes, shape in entries:
        group = group_of(name)
        if group is None:
            continue
        sizes[group] += nbytes
        kinds[group].add(kind)
        if group == "embedding" and name.endswith("weight") and shape:
            vocab = max(vocab, *shape)  # the vocabulary outnumbers the hidden size in every Llama
    tied = "head" not in sizes

    def text(group: str) -> str:
        return label(group, ", ".join(sorted(kinds[group]))) or "none"

    out = []
    for group in GROUPS:
        decode = sizes[group] // vocab if group == "embedding" else sizes[group]  # one row per token
        if group == "head" and tied:
            out.append(StoredGroup(group, f"tied to the embedding ({text('embedding')})", 0, sizes["embedding"]))
        else:
            out.append(StoredGroup(group, text(group), sizes[group], decode))
    return out
