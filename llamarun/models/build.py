"""Build a model from a checkpoint: allocate nothing on the meta device, then assign tensors as they stream in."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from llamarun.errors import ConfigMismatchError
from llamarun.layers.rotary import RotaryEmbedding
from llamarun.loaders.checkpoint import Checkpoint
from llamarun.models.llama import LlamaForCausalLM

# Tensors some checkpoints carry that the model derives itself.
_DERIVED = ("rotary_emb.inv_freq", "rotary.inv_freq")


def build_model(ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                on_tensor: Callable[[str], None] | None = None,
                pack: Callable[[nn.Linear], nn.Module] | None = None) -> LlamaForCausalLM:
    """A ready-to-run model in eval mode; every parameter checked against the config's shapes.

    `pack` (see llamarun/quant) replaces each linear layer as soon as its weight is loaded, so the
    expanded weights of the whole model never sit in memory together.
    """
    config = ckpt.config
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for name, tensor in ckpt.tensors(dtype):
        if on_tensor is not None:
            on_tensor(name)
        if name.endswith(_DERIVED):
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: the head is the embedding table
        if name not in params:
            raise ConfigMismatchError(f"checkpoint tensor '{name}' has no place in a Llama model",
                                      "the config and weights do not belong together")
        expected = tuple(params[name].shape)
        if tuple(tensor.shape) != expected:
            raise ConfigMismatchError(
                f"tensor '{name}' has shape {tuple(tensor.shape)}, but the config implies {expected}",
                "the config and weights do not belong together",
            )
        _assign(model, name, tensor.to(device=device, dtype=dtype), pack)
        loaded.add(name)
    expected_names = {n for n in params if not (n == "lm_head.weight" and config.tie_word_embeddings)}
    missing = sorted(expected_names - loaded)
    if missing:
        raise ConfigMismatchError(f"checkpoint lacks {len(missing)} tensors, e.g. '{missing[0]}'",
                                  "the file may be truncated or not a Llama model")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
        if pack is not None:
            model.lm_head = pack(model.lm_head)
    model.model.rotary = RotaryEmbedding(config).to(device)
    return model.eval().requires_grad_(False)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor,
            pack: Callable[[nn.Linear], nn.Module] | None) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    if pack is not None and isinstance(module, nn.Linear):
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, pack(module))
