"""The guard's prompt as token ids that fit the guard model's context, room for the verdict included.

A conversation too long for the guard loses its oldest turns first (context, not the judged text). If the
judged text alone is still too long, its middle is cut out, keeping its start and its end: an injected
instruction or an unsafe request is as likely at either end, and a guard that refused long texts would
be a way around it. The caller is told (`trimmed`) so the verdict can say what was judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from llamarun.errors import LlamarunError
from llamarun.safety.llama_guard.prompt import PromptStyle, Turn, guard_prompt

if TYPE_CHECKING:
    from llamarun.llm.served import ServedModel

_ELISION = "\n[...]\n"


def encode_prompt(served: ServedModel, turns: Sequence[Turn], categories: Mapping[str, str],
                  style: PromptStyle) -> list[int]:
    """Token ids of the prompt; <|begin_of_text|> is written in the text, so no second BOS is added."""
    return served.tokenizer.encode(guard_prompt(turns, categories, style), add_bos=False, allow_special=True)


def fit_prompt(served: ServedModel, turns: list[Turn], categories: Mapping[str, str], style: PromptStyle,
               reserve: int) -> tuple[list[int], bool]:
    """(prompt ids, trimmed): the prompt within `served.context_length - reserve` tokens."""
    budget = served.context_length - reserve
    ids = encode_prompt(served, turns, categories, style)
    if len(ids) <= budget:
        return ids, False
    while len(turns) > 1:  # drop context, oldest first
        turns = turns[1:]
        ids = encode_prompt(served, turns, categories, style)
        if len(ids) <= budget:
            return ids, True
    last = turns[-1]
    lo, hi = 0, len(last.text)  # the longest head+tail cut (in characters) that fits: binary search
    best: list[int] | None = None
    while lo < hi:
        keep = (lo + hi + 1) // 2
        candidate = encode_prompt(served, [Turn(last.role, _cut(last.text, keep))], categories, style)
        if len(candidate) <= budget:
            lo, best = keep, candidate
        else:
            hi = keep - 1
    if best is None:
        best = encode_prompt(served, [Turn(last.role, _cut(last.text, 0))], categories, style)
        if len(best) > budget:
            raise LlamarunError(f"the Llama Guard prompt alone needs {len(best)} tokens, more than the guard "
                                f"model's context of {served.context_length} leaves",
                                "load the guard model with a larger context")
    return best, True


def _cut(text: str, keep: int) -> str:
    """`text` with its middle replaced by a marker, keeping `keep` characters split between both ends."""
    if keep >= len(text):
        return text
    head = (keep + 1) // 2
    return text[:head] + _ELISION + text[len(text) - (keep - head):]
