"""The one tokenizer interface every backend (HF tokenizer.json, Meta tiktoken, GGUF vocab) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class Tokenizer(ABC):
    """Turns text into token ids and back.

    Attributes every implementation sets:
      vocab_size   number of ids, special tokens included
      bos_id       id of the begin-of-sequence token, or None
      eos_id       id of the end-of-sequence token, or None
      special_ids  ids of control tokens (skipped by `decode(..., skip_special=True)`)
      add_bos      whether prompts conventionally start with bos (GGUF `add_bos_token`, HF post-processor)
      strips_leading_space
                   whether `decode` drops one leading space (SentencePiece vocabularies, which encode
                   text with a "▁" prepended); False unless an implementation says otherwise

    `decode(ids)` is the UTF-8 decoding (invalid bytes -> U+FFFD) of the joined `token_bytes` of the
    kept ids, less one leading space when `strips_leading_space`: the incremental detokenizer relies
    on exactly this to stream text that adds up to `decode`.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    special_ids: frozenset[int]
    add_bos: bool
    strips_leading_space: bool = False

    @abstractmethod
    def encode(self, text: str, *, add_bos: bool = False, allow_special: bool = True) -> list[int]:
        """Token ids of `text`. Special-token strings in the text become special ids only when
        `allow_special` is true; otherwise they are encoded as ordinary text."""

    @abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (special tokens: their UTF-8 text)."""

    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Id of a token given by its string form (e.g. '<|eot_id|>'), or None."""
