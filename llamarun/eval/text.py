"""The text an eval runs over: the one shipped with llamarun by default, read and tokenized with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamarun.errors import LlamarunError

# Lewis Carroll's "Alice's Adventures in Wonderland" (public domain): about 39,000 tokens of the default
# model's tokenizer. Where it comes from and how it was prepared: llamarun/data/README.md.
DEFAULT_TEXT = Path(__file__).resolve().parent.parent / "data" / "alice-in-wonderland.txt"


def read_text(path: Path | str) -> str:
    """The UTF-8 text in `path`, or a clear error when it is missing, unreadable or empty."""
    path = Path(path)
    hint = "give a UTF-8 text file with --text"
    if not path.exists():
        raise LlamarunError(f"text file '{path}' does not exist", hint)
    if path.is_dir():
        raise LlamarunError(f"'{path}' is a folder, not a text file", hint)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LlamarunError(f"'{path}' is not UTF-8 text", hint) from None
    except OSError as err:
        raise LlamarunError(f"cannot read '{path}': {err.strerror}", hint) from None
    if not text.strip():
        raise LlamarunError(f"text file '{path}' is empty", hint)
    return text


def text_tokens(tokenizer: Any, text: str, max_tokens: int | None = None) -> list[int]:
    """The text's token ids as the model sees a raw prompt (bos when its tokenizer adds one), cut to `max_tokens`."""
    if max_tokens is not None and max_tokens < 2:
        raise LlamarunError(f"--max-tokens {max_tokens} is too few", "a prediction needs at least 2 tokens")
    ids = tokenizer.encode(text, add_bos=tokenizer.add_bos, allow_special=False)
    return ids[:max_tokens] if max_tokens is not None else ids
