"""What each layer group is held in and the bytes it takes: planned from the config, or read off a built model.

The groups users recognise: attention linears (merged q/k/v and o_proj), MLP linears (merged gate/up and
down_proj), the output head, the embedding table, and the norms. A decode step reads every linear and
norm whole, the embedding table one row per token, and the head whole (with tied embeddings and float
weights the head *is* the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GROUPS = ("attention", "mlp", "head", "embedding", "norms")


@dataclass(frozen=True)
class GroupFootprint:
    """One layer group: its weight format, bytes held, and bytes one decode step reads."""

    group: str
    format: str
    bytes: int
    decode_bytes: int


def linear_shapes(config: Any) -> dict[str, list[tuple[int, int, int]]]:
    """Group -> [(out_features, in_features, how many)] of the linears the model holds."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_layers
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return {
        "attention": [(q + 2 * kv, h, layers), (h, q, layers)],
        "mlp": [(2 * i, h, layers), (h, i, layers)],
        "head": [(config.vocab_size, h, 1)],
    }


def plan_footprint(config: Any, method: Any, element: int, dtype_name: str,
                   head_method: Any = "same") -> list[GroupFootprint]:
    """The footprint before loading: `method` (a QuantMethod, or None for float) packs every linear, and
    `head_method` the output head (a QuantMethod, None for float, or "same": `method`)."""
    h, v = config.hidden_size, config.vocab_size
    out = []
    for group, shapes in linear_shapes(config).items():
        packs = head_method if group == "head" and head_method != "same" else method
        if group == "head" and packs is None and config.tie_word_embeddings:
            out.append(GroupFootprint("head", f"{dtype_name} (tied)", 0, v * h * element))
            continue
        if packs is None:
            size = sum(n * k * c for n, k, c in shapes) * element
        else:
            size = sum(packs.packed_bytes(n, k, min(element, 4)) * c for n, k, c in shapes)
        out.append(GroupFootprint(group, dtype_name if packs is None else packs.name, size, size))
    out.append(GroupFootprint("embedding", dtype_name, v * h * element, h * element))
    norms = (2 * config.num_layers + 1) * h * element
    out.append(GroupFootprint("norms", dtype_name, norms, norms))
    return out


def model_footprint(model: Any) -> list[GroupFootprint]:
    """The footprint of a built model, from its modules' real packed sizes and dtypes."""
    from torch import nn

    from llamarun.layers.norm import RMSNorm
    from llamarun.quant.method import PackedLinear

    sizes: dict[str, int] = dict.fromkeys(GROUPS, 0)
    formats: dict[str, set[str]] = {g: set() for g in GROUPS}
    embed = model.model.embed_tokens.weight
    head = getattr(model.lm_head, "inner", model.lm_head)  # a tensor-parallel shard wraps it (parallel/layers.py)
    tied = getattr(head, "weight", None) is embed
    for name, module in model.named_modules():
        group = _group_of(name, module)
        if group is None:
            continue
        if isinstance(module, PackedLinear):
            sizes[group] += module.nbytes()
            formats[group].add(module.format)
        elif isinstance(module, (nn.Linear, nn.Embedding, RMSNorm)) or (group == "embedding"
                                                                          and hasattr(module, "weight")):
            weight = module.weight
            formats[group].add(str(weight.dtype).removeprefix("torch.") + (" (tied)" if tied and group == "head"
                                                                          else ""))
            if not (tied and group == "head"):
                sizes[group] += weight.numel() * weight.element_size()
    row = embed.shape[1] * embed.element_size()
    out = []
    for group in GROUPS:
        decode = sizes[group]
        if group == "embedding":
            decode = row
        elif group == "head" and tied:
            decode = sizes["embedding"]
        out.append(GroupFootprint(group, ", ".join(sorted(formats[group])) or "none", sizes[group], decode))
    return out


def _group_of(name: str, module: Any) -> str | None:
    # A tensor-parallel wrapper holds the real linear as `.inner`: count it under the wrapper's name.
    name = name.removesuffix(".inner")
    leaf = name.rpartition(".")[2]
    if leaf in ("qkv_proj", "o_proj"):
        return "attention"
    if leaf in ("gate_up_proj", "down_proj"):
        return "mlp"
    if name == "lm_head":
        return "head"
    if leaf == "embed_tokens":
        return "embedding"
    if type(module).__name__ == "RMSNorm":
        return "norms"
    return None


def total_bytes(groups: list[GroupFootprint]) -> int:
    """Bytes all weights take in memory."""
    return sum(g.bytes for g in groups)


def decode_bytes(groups: list[GroupFootprint]) -> int:
    """Weight bytes one decode step reads."""
    return sum(g.decode_bytes for g in groups)


def footprint_rows(groups: list[GroupFootprint]) -> list[tuple[str, str]]:
    """(label, text) rows for `--verbose` and reports: each group's format, and the bytes a decode step reads."""
    formats = ", ".join(f"{g.group} {g.format}" for g in groups if g.group != "norms")
    return [("weights", formats),
            ("weight reads", f"{_size(decode_bytes(groups))} per decode step ({_size(total_bytes(groups))} held)")]


def describe_footprint(groups: list[GroupFootprint]) -> list[str]:
    """The same rows as `label: text` lines."""
    return [f"{label}: {text}" for label, text in footprint_rows(groups)]


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
