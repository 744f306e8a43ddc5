"""Build a model from a checkpoint: allocate nothing on the meta device, then assign tensors as they stream in."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llamarun.errors import ConfigMismatchError
from llamarun.layers.linear import MergedLinear
from llamarun.layers.rotary import RotaryEmbedding
from llamarun.loaders.checkpoint import Checkpoint
from llamarun.models.llama import LlamaForCausalLM
from llamarun.quant.method import replace_submodule

# Tensors some checkpoints carry that the model derives itself.
_DERIVED = ("rotary_emb.inv_freq", "rotary.inv_freq")
Pack = Callable[[nn.Linear], nn.Module]
Layout = Any  # a packed weight of quant/layouts.py (Int4Weight | Fp8Weight | Int8Weight), kept untyped here


@dataclass
class _Target:
    """Where a checkpoint tensor goes: a module's parameter, or a row range of a merged linear's weight."""

    module: str
    attr: str
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None
    shard: str | None = None  # the merged linear's part this tensor fills (q_proj, gate_proj, ...)


def _targets(model: nn.Module) -> dict[str, _Target]:
    """Checkpoint (HF) name -> target, for every parameter the model needs."""
    targets = {}
    for module_name, module in model.named_modules():
        if isinstance(module, MergedLinear):
            parent = module_name.rpartition(".")[0]
            for shard, (start, end) in module.shards.items():
                name = f"{parent}.{shard}.weight" if parent else f"{shard}.weight"
                targets[name] = _Target(module_name, "weight", (end - start, module.in_features), (start, end), shard)
            continue
        for attr, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{attr}" if module_name else attr
            targets[name] = _Target(module_name, attr, tuple(param.shape))
    return targets


def build_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                on_tensor: Callable[[str], None] | None = None, pack: Pack | None = None,
                keep_packed: bool = False) -> LlamaForCausalLM:
    """A ready-to-run model in eval mode; every tensor checked against the config's shapes.

    `pack` (see llamarun/quant) replaces each linear layer as soon as its weight is complete, so the
    expanded weights of the whole model never sit in memory together. With `keep_packed`, linear
    weights a quantized checkpoint stores packed arrive as layouts and become packed linears directly
    (merged linears once all their parts arrived), never expanded.
    """
    config = ckpt.config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    targets = _targets(model)
    if config.tie_word_embeddings:
        targets.pop("lm_head.weight", None)  # tied: the head is the embedding table
    filled: dict[str, int] = {}  # module -> rows filled so far, for merged linears
    parts: dict[str, dict[str, Layout]] = {}  # merged module -> its packed parts so far
    loaded: set[str] = set()
    stream = ckpt.packed_tensors(dtype) if keep_packed else ckpt.tensors(dtype)
    for name, tensor in stream:
        if on_tensor is not None:
            on_tensor(name)
        if name.endswith(_DERIVED) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        target = targets.get(name)
        if target is None:
            raise ConfigMismatchError(f"checkpoint tensor '{name}' has no place in a Llama model",
                                      "the config and weights do not belong together")
        if not isinstance(tensor, torch.Tensor):  # a packed layout (keep_packed)
            _place_packed(model, name, target, _to_device(tensor, device), parts, dtype)
            loaded.add(name)
            continue
        if tuple(tensor.shape) != target.shape:
            raise ConfigMismatchError(
                f"tensor '{name}' has shape {tuple(tensor.shape)}, but the config implies {target.shape}",
                "the config and weights do not belong together",
            )
        tensor = tensor.to(device=device, dtype=dtype)
        module = model.get_submodule(target.module)
        if target.rows is None:
            module._parameters[target.attr] = nn.Parameter(tensor, requires_grad=False)
            complete = True
        else:
            if module.weight.is_meta:
                module.weight = nn.Parameter(torch.empty(module.weight.shape, dtype=dtype, device=device),
                                             requires_grad=False)
            module.weight.data[target.rows[0]:target.rows[1]] = tensor
            filled[target.module] = filled.get(target.module, 0) + tensor.shape[0]
            complete = filled[target.module] == module.out_features
        loaded.add(name)
        if complete and pack is not None and isinstance(module, nn.Linear):
            replace_submodule(model, target.module, pack(module))
    missing = sorted(set(targets) - loaded)
    if missing:
        raise ConfigMismatchError(f"checkpoint lacks {len(missing)} tensors, e.g. '{missing[0]}'",
                                  "the file may be truncated or not a Llama model")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        if pack is None and keep_packed:
            # The table arrives expanded (an embedding looks rows up), but as the head it is the largest
            # matmul of a small model: pack it as a quantized file's other non-int4 linears are (int8).
            from llamarun.quant.int8 import Int8Method

            pack = Int8Method().pack_linear
        if pack is not None:
            model.lm_head = pack(model.lm_head)
    model.model.rotary = RotaryEmbedding(config).to(device)
    return model.eval().requires_grad_(False)


def _place_packed(model: nn.Module, name: str, target: _Target, layout: Layout,
                  parts: dict[str, dict[str, Layout]], dtype: torch.dtype) -> None:
    """Make the packed linear for `layout`; a merged linear's parts wait for each other, then join by rows.

    Parts packed differently (GGUF Q4_K_M stores v_proj in Q6_K beside Q4_K q/k, say) cannot share one
    packed module: that merged linear is expanded to `dtype` instead, exactly, and the rest stays packed.
    """
    from llamarun.quant.convert.rows import cat_rows
    from llamarun.quant.layouts import dequantize
    from llamarun.quant.modes import packed_linear

    if tuple(layout.shape) != target.shape:
        raise ConfigMismatchError(f"packed tensor '{name}' has shape {tuple(layout.shape)}, but the config implies "
                                  f"{target.shape}", "the config and weights do not belong together")
    if target.rows is None:
        replace_submodule(model, target.module, packed_linear(layout))
        return
    merged = model.get_submodule(target.module)
    got = parts.setdefault(target.module, {})
    got[target.shard] = layout
    if len(got) == len(merged.shards):
        ordered = [got[shard] for shard in merged.shards]  # in the merged linear's row order
        try:
            replace_submodule(model, target.module, packed_linear(cat_rows(ordered)))
        except ConfigMismatchError:  # mixed packings: expand this one linear
            weight = torch.cat([dequantize(p, dtype) for p in ordered])  # [N, K]
            merged.weight = nn.Parameter(weight, requires_grad=False)
        del parts[target.module]


def _to_device(layout: Layout, device: str | torch.device) -> Layout:
    changes = {f.name: getattr(layout, f.name).to(device) for f in dataclasses.fields(layout)
               if isinstance(getattr(layout, f.name), torch.Tensor)}
    return dataclasses.replace(layout, **changes)


