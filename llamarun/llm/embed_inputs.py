"""What an embedding request asks for, checked before any model work: inputs to token ids, context, dimensions.

Torch-free, so the server can refuse a bad request (too many inputs, too long, too many dimensions)
without touching the engine; llm/embeddings.py does the math on what passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llamarun.errors import RequestError

if TYPE_CHECKING:
    from llamarun.text.tokenizer import Tokenizer

MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request; it bounds the work one request can queue

EmbedInput = str | Sequence[int]


def embedding_ids(inputs: Sequence[EmbedInput], tokenizer: Tokenizer, context_length: int, *,
                  truncate: bool = True) -> list[list[int]]:
    """Token ids for each input: text through the tokenizer (bos by its convention), id lists as given.

    An input longer than the context is cut to its first `context_length` tokens when `truncate`, and
    refused otherwise, as Ollama's /api/embed does.
    """
    check_input_count(len(inputs))
    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            ids = tokenizer.encode(item, add_bos=tokenizer.add_bos, allow_special=True)
        else:
            ids = [int(t) for t in item]
            bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
            if bad:
                raise RequestError(f"input {i} has token id {bad[0]}, outside the vocabulary of "
                                   f"{tokenizer.vocab_size}", param="input", code="invalid_token")
        if not ids:
            raise RequestError(f"input {i} is empty", "give some text to embed", param="input", code="empty_input")
        if len(ids) > context_length:
            if not truncate:
                raise RequestError(f"input {i} has {len(ids)} tokens, but the context holds {context_length}",
                                   "shorten it, raise num_ctx, or allow truncate", param="input",
                                   code="context_length_exceeded")
            ids = ids[:context_length]
        out.append(ids)
    return out


def check_input_count(count: int) -> None:
    """Refuse more than MAX_INPUTS inputs in one request."""
    if count > MAX_INPUTS:
        raise RequestError(f"{count} inputs in one request; at most {MAX_INPUTS} are allowed",
                           "split the inputs over several requests", param="input", code="too_many_inputs")


def check_dimensions(dimensions: int | None, hidden_size: int) -> None:
    """Refuse a `dimensions` the model cannot give: below 1 or above its hidden size."""
    if dimensions is not None and not 1 <= dimensions <= hidden_size:
        raise RequestError(f"dimensions={dimensions}, but this model's embeddings have {hidden_size}",
                           f"ask for 1 to {hidden_size} dimensions", param="dimensions", code="invalid_dimensions")
