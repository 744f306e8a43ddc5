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

    from llamarun.text.tokenizer import Tokenizer

# Vocabulary strings that end a turn in the chat formats we know (Llama 3, ChatML, Llama 2/Mistral).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>")


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
    _tokenizer: Tokenizer | None = field(default=None, repr=False)

    def tokenizer(self) -> Tokenizer:
        """The checkpoint's tokenizer, built on first use."""
        if self._tokenizer is None:
            self._tokenizer = self.make_tokenizer()
        return self._tokenizer

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
