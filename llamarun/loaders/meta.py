"""Meta's original checkpoints: `consolidated.NN.pth` model-parallel shards, `params.json`, `tokenizer.model`.

Shards are merged tensor by tensor (memory-mapped, so a 70B checkpoint is never held twice). Meta's
q/k rows use the interleaved rotary layout and are re-permuted to HF's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch

from llamarun.config import ModelConfig
from llamarun.errors import CheckpointError, ConfigMismatchError
from llamarun.loaders.checkpoint import Checkpoint, read_json
from llamarun.loaders.permute import interleaved_to_half_split

_GLOBAL_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)\.weight")
# Row-parallel weights are split along their input dimension; everything else along rows (or replicated).
_ROW_PARALLEL = ("attention.wo", "feed_forward.w2")


def meta_folder(path: Path) -> Path:
    """The folder holding params.json: the path itself or its `original/` subfolder."""
    for candidate in (path, path / "original"):
        if (candidate / "params.json").exists():
            return candidate
    raise CheckpointError(f"{path} has no params.json", "is this a Meta original checkpoint folder?")


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def _merge(name: str, parts: list[torch.Tensor], config: ModelConfig) -> torch.Tensor:
    if len(parts) == 1 or parts[0].dim() == 1:
        return parts[0]
    if any(key in name for key in _ROW_PARALLEL):
        return torch.cat(parts, dim=1)
    if name == "tok_embeddings.weight" and parts[0].shape[1] * len(parts) == config.hidden_size:
        return torch.cat(parts, dim=1)  # Llama 2 split the embedding width, Llama 3 the vocabulary
    return torch.cat(parts, dim=0)


def open_meta(path: Path) -> Checkpoint:
    folder = meta_folder(path)
    params = read_json(folder / "params.json")
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{folder} has no consolidated.*.pth shards", "download the original/ folder")
    try:
        states = [torch.load(s, map_location="cpu", mmap=True, weights_only=True) for s in shards]
    except Exception as err:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"cannot read {folder}/consolidated.*.pth: {err}", "re-download the checkpoint") from None
    first = states[0]
    if "layers.0.feed_forward.w1.weight" not in first:
        raise ConfigMismatchError(f"{shards[0].name} has no layers.0.feed_forward.w1.weight",
                                  "is this a Llama checkpoint?")
    ffn = first["layers.0.feed_forward.w1.weight"].shape[0] * len(states)
    config = ModelConfig.from_meta_params(params, intermediate_size=ffn)
    names = {}
    for name in first:
        hf = _hf_name(name)
        if hf is None:
            if name.endswith("rope.freqs"):
                continue
            raise ConfigMismatchError(f"{shards[0].name} has an unexpected tensor '{name}'")
        names[hf] = name

    def tensors(dtype) -> Iterator[tuple[str, torch.Tensor]]:
        for hf, name in names.items():
            try:
                t = _merge(name, [s[name] for s in states], config).to(dtype)
            except KeyError:
                raise CheckpointError(f"a shard in {folder} lacks '{name}'",
                                      "the shards do not belong together") from None
            if hf.endswith("q_proj.weight"):
                t = interleaved_to_half_split(t, config.num_heads)
            elif hf.endswith("k_proj.weight"):
                t = interleaved_to_half_split(t, config.num_kv_heads)
            yield hf, t

    def tokenizer():
        from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer

        model = folder / "tokenizer.model"
        if not model.exists():
            raise CheckpointError(f"{folder} has no tokenizer.model", "download it with the weights")
        return TiktokenTokenizer.from_file(model)

    return Checkpoint(
        format="meta", path=folder, config=config, tensor_names=list(names), tensors=tensors,
        make_tokenizer=tokenizer, chat_template=None, extra_stop_ids=(),
        quantization=str(next(iter(first.values())).dtype).removeprefix("torch."),
    )
