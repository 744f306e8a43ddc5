"""Which requests are large enough that their tokenization's memory should be given back (utils/heap.py)."""

from __future__ import annotations

from typing import Any

LARGE_INPUT_CHARS = 256 * 1024  # about 64k tokens of text: tokenizing it allocates tens of megabytes


def input_chars(req: Any) -> int:
    """Characters of text a ChatRequest brings to the tokenizer (messages, or raw prompts; ids count zero)."""
    total = sum(len(m.content) for m in req.messages or ())
    total += sum(len(p) for p in req.prompts or () if isinstance(p, str))
    return total


def is_large(req: Any) -> bool:
    return input_chars(req) >= LARGE_INPUT_CHARS
