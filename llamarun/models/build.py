"""Build a model from a checkpoint: allocate nothing on the meta device, then assign tensors as they stream in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from llamarun.errors import ConfigMismatchError
from llamarun.layers.linear import MergedLinear
from llamarun.layers.rotary import RotaryEmbedding
from llamarun.loaders.checkpoint import Checkpoint
from llamarun.models.llama import LlamaForCausalLM

# Tensors some checkpoints carry that the model derives itself.
_DERIVED = ("rotary_emb.inv_freq", "rotary.inv_freq")
Pack = Callable[[nn.Linear], nn.Module]


@dataclass
class _Target:
    """Where a checkpoint tensor goes: a module's parameter, or a row range of a merged linear's weight."""

    module: str
    attr: str
    shape: tuple[int, ...]
    rows: tuple[int, int] | None = None


def _targets(model: nn.Module) -> dict[str, _Target]:
    """Checkpoint (HF) name -> target, for every parameter the model needs."""
    targets = {}
    for module_name, module in model.named_modules():
        if isinstance(module, MergedLinear):
            parent = module_name.rpartition(".")[0]
            for shard, (start, end) in module.shards.items():
                name = f"{parent}.{shard}.weight" if parent else f"{shard}.weight"
                targets[name] = _Target(module_name, "weight", (end - start, module.in_features), (start, end))
            continue
        for attr, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{attr}" if module_name else attr
            targets[name] = _Target(module_name, attr, tuple(param.shape))
    return targets


def build_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                on_tensor: Callable[[str], None] | None = None, pack: Pack | None = None) -> LlamaForCausalLM:
    """A ready-to-run model in eval mode; every tensor checked against the config's shapes.

    `pack` (see llamarun/quant) replaces each linear layer as soon as its weight is complete, so the
    expanded weights of the whole model never sit in memory together.
    """
    config = ckpt.config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    targets = _targets(model)
    if config.tie_word_embeddings:
        targets.pop("lm_head.weight", None)  # tied: the head is the embedding table
    filled: dict[str, int] = {}  # module -> rows filled so far, for merged linears
    loaded: set[str] = set()
    for name, tensor in ckpt.tensors(dtype):
        if on_tensor is not None:
            on_tensor(name)
        if name.endswith(_DERIVED) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        target = targets.get(name)
        if target is None:
            raise ConfigMismatchError(f"checkpoint tensor '{name}' has no place in a Llama model",
                                      "the config and weights do not belong together")
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
            _replace(model, target.module, pack(module))
    missing = sorted(set(targets) - loaded)
    if missing:
        raise ConfigMismatchError(f"checkpoint lacks {len(missing)} tensors, e.g. '{missing[0]}'",
                                  "the file may be truncated or not a Llama model")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        if pack is not None:
            model.lm_head = pack(model.lm_head)
    model.model.rotary = RotaryEmbedding(config).to(device)
    return model.eval().requires_grad_(False)


def _replace(model: nn.Module, module_name: str, new: nn.Module) -> None:
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
