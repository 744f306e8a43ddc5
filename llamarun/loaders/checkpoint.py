"""What every loader produces: a config, tensors under Hugging Face names, and the text-side metadata."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamarun.config import ModelConfig
from llamarun.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from llamarun.quant.convert.report import PackingReport
    from llamarun.quant.convert.result import PackedWeight
    from llamarun.text.tokenizer import Tokenizer

    PackedStream = Callable[[torch.dtype], Iterator[tuple[str, torch.Tensor | PackedWeight]]]

# Vocabulary strings that end a turn in the chat formats we know (Llama 3, ChatML, Llama 2/Mistral).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>")
# HF names of the weights linear layers hold: the only tensors a loader may hand over packed.
LINEAR_WEIGHT_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                          "gate_proj.weight", "up_proj.weight", "down_proj.weight", "lm_head.weight")


@dataclass
class Checkpoint:
    """A model on disk, opened but not loaded.

    `tensors(dtype)` yields `(hf_name, tensor)` one at a time, dequantized and re-permuted into HF
    layout, so the loader never holds the whole model twice.
    """

    format: str
    path: Path
    config: ModelConfig
    tensor_names: list[str]
    tensors: Callable[[torch.dtype], Iterator[tuple[str, torch.Tensor]]]
    make_tokenizer: Callable[[], Tokenizer]
    chat_template: str | None = None
    extra_stop_ids: tuple[int, ...] = ()
    quantization: str = "none"
    # True when the weights on disk are already quantized (GGUF blocks, MLX groups): running them
    # through packed int8 kernels loses far less than the file's own quantization did.
    is_quantized: bool = False
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    # Like `tensors`, but linear weights the file stores quantized come as packed layouts
    # (quant/layouts.py) converted without expanding; None when the format has nothing to keep packed.
    packed_source: PackedStream | None = field(default=None, repr=False)
    # What `packed_source` kept packed, re-quantized or expanded: a plan at open, measured as it streams.
    packing: PackingReport | None = field(default=None, repr=False)
    packing_plan: str = ""
    _tokenizer: Tokenizer | None = field(default=None, repr=False)

    def tokenizer(self) -> Tokenizer:
        """The checkpoint's tokenizer, built on first use."""
        if self._tokenizer is None:
            self._tokenizer = self.make_tokenizer()
        return self._tokenizer

    def packed_tensors(self, dtype: torch.dtype,
                       keep_packed: bool = True) -> Iterator[tuple[str, torch.Tensor | PackedWeight]]:
        """`(hf_name, tensor or packed weight)`, one at a time, in the same order and names as `tensors`.

        With `keep_packed`, each linear weight (see `LINEAR_WEIGHT_SUFFIXES`) whose format maps onto a
        packed layout comes as an `Int4Weight`, `Fp8Weight` or `Int8Weight` (q/k rows already in HF
        order), so a build hook can place it without expanding; all other tensors come as `tensors`
        gives them. Without `keep_packed`, or for a float checkpoint, this is `tensors(dtype)`.
        """
        if keep_packed and self.packed_source is not None:
            yield from self.packed_source(dtype)
        else:
            yield from self.tensors(dtype)

    def packing_note(self) -> str:
        """What loading packed (exact), re-quantized (with its measured error) or expanded; measured
        figures once `packed_tensors` has streamed, the plan before that; "" for float checkpoints."""
        measured = self.packing.note() if self.packing is not None else ""
        return measured or self.packing_plan

    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation: named by the checkpoint, plus its vocabulary's end-of-turn tokens."""
        return end_of_turn_ids(self.tokenizer(), list(self.extra_stop_ids))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, with a clear error when it is unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing", "is this a complete checkpoint folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})", "re-download the checkpoint") from None


def end_of_turn_ids(tokenizer: Tokenizer, extra: list[int | None]) -> tuple[int, ...]:
    """Stop ids: the ones the checkpoint names, plus every end-of-turn token its vocabulary has."""
    ids = {i for i in extra if i is not None}
    if tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    for text in END_OF_TURN_TOKENS:
        token_id = tokenizer.token_to_id(text)
        if token_id is not None and token_id in tokenizer.special_ids:
            ids.add(token_id)
    return tuple(sorted(ids))


def is_linear_weight(name: str) -> bool:
    """True for an HF name a linear layer's weight goes by (the tensors a loader may keep packed)."""
    return name.endswith(LINEAR_WEIGHT_SUFFIXES)
