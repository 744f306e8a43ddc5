"""The vocabulary a grammar is compiled against: each token's raw bytes, the stop tokens, the logits width.

Built once per loaded model from its tokenizer and handed to the engine at construction, so the engine
(token in, token out) never holds a tokenizer. Plain data, picklable, no torch and no grammar library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from llamarun.text.tokenizer import Tokenizer


@dataclass(frozen=True, eq=False)
class GrammarVocab:
    """Token bytes by id (control tokens empty, so no grammar ever allows them), stop ids, logits width.

    `logits_size` is the model's output width, which may exceed the tokenizer's ids (padded embeddings):
    masks are that wide and the padded ids are never allowed. `stop_ids` are the tokens a finished grammar
    allows, which must be among the request's own stop tokens so that allowing them ends the request; a model
    with none cannot end a grammar, and the engine refuses grammars for it.
    """

    tokens: tuple[bytes, ...]
    stop_ids: tuple[int, ...]
    logits_size: int

    def __post_init__(self) -> None:
        if self.logits_size < len(self.tokens):
            raise ValueError(f"logits width {self.logits_size} is below the {len(self.tokens)} token ids")

    @cached_property
    def key(self) -> str:
        """A digest of the whole vocabulary: compiled grammars are cached per (vocabulary, spec)."""
        digest = hashlib.sha256()
        for t in self.tokens:
            digest.update(len(t).to_bytes(2, "little") + t)
        digest.update(repr((self.stop_ids, self.logits_size)).encode())
        return digest.hexdigest()[:32]

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, stop_ids: Iterable[int], logits_size: int) -> GrammarVocab:
        """The vocabulary of `tokenizer`, with its control and stop tokens emptied (so text never uses them)."""
        stops = tuple(sorted({int(i) for i in stop_ids if 0 <= int(i) < tokenizer.vocab_size}))
        if not stops and tokenizer.eos_id is not None:
            stops = (tokenizer.eos_id,)
        hidden = tokenizer.special_ids | set(stops)
        tokens = tuple(b"" if i in hidden else tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size))
        return cls(tokens, stops, max(logits_size, tokenizer.vocab_size))
