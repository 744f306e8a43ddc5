"""The guard's score: the model's probability of "unsafe" where it writes its verdict.

Meta's model card: "we look at the probability for the first token, and use that as the 'unsafe' class
probability". The models' templates end at the assistant header, so the first token the model writes is
"\n\n"; the verdict token is the first one that is not whitespace. The engine reports log-probabilities
of the raw model logits (before penalties and any grammar mask: sampling/sampler.py), so the score is the
model's own even when a grammar forced the text. The engine returns the chosen token and the 20 most likely
ones; when "unsafe" is neither, its probability is below the 20th one's, and that bound is the score
(`bound` set): it errs towards unsafe, and is under 5% anyway.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llamarun.engine.step import SampledToken
from llamarun.text.tokenizer import Tokenizer


@dataclass(frozen=True)
class UnsafeScore:
    probability: float
    position: int  # index of the verdict token among the generated tokens
    bound: bool = False  # True: "unsafe" was not among the top tokens; probability is an upper bound


def verdict_token_id(tokenizer: Tokenizer, word: str = "unsafe") -> int | None:
    """The id of `word` when the vocabulary has it as one token (Llama 3's does: 39257), else None."""
    ids = tokenizer.encode(word, add_bos=False, allow_special=False)
    return ids[0] if len(ids) == 1 else None


def unsafe_score(tokens: Sequence[SampledToken], tokenizer: Tokenizer, unsafe_id: int | None
                 ) -> UnsafeScore | None:
    """P("unsafe") at the verdict position of `tokens` (generated with logprobs), or None when the output is
    empty, the vocabulary has no single "unsafe" token, or no log-probabilities were returned."""
    if unsafe_id is None:
        return None
    position = _verdict_position(tokens, tokenizer)
    if position is None:
        return None
    tok = tokens[position]
    if tok.token_id == unsafe_id and tok.logprob is not None:
        return UnsafeScore(math.exp(tok.logprob), position)
    top = tok.top or []
    for token_id, logprob in top:
        if token_id == unsafe_id:
            return UnsafeScore(math.exp(logprob), position)
    if not top:
        return None
    return UnsafeScore(math.exp(min(lp for _, lp in top)), position, bound=True)


def _verdict_position(tokens: Sequence[SampledToken], tokenizer: Tokenizer) -> int | None:
    for i, tok in enumerate(tokens):
        if tok.token_id in tokenizer.special_ids:  # the model ended (or wrote a control token) here
            return i
        if tokenizer.token_bytes(tok.token_id).strip():
            return i
    return None
