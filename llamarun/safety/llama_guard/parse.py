"""Reading Llama Guard's answer: "safe", or "unsafe" and a line of category codes ("unsafe\nS1,S10").

Every text gets a defined reading, and a malformed one is never read as safe (fail closed):

- Whitespace around and between lines, stray control-token text ("<|eot_id|>") and the case of the
  verdict word and codes ("S1" / "s1") are ignored. Codes may be split by commas, spaces or newlines, on
  the verdict's line or the next ones; repeats are dropped.
- "safe" followed by nothing is safe. Anything after "safe" ("safe\nS1", "safe.") contradicts or garbles
  the verdict: malformed.
- "unsafe" with codes is unsafe with those codes. A code of the right shape that the guard did not ask
  about ("S15", or S14 on the 1B) is kept (it is what the model said) and noted in `problems`.
- "unsafe" with no code is unsafe with no category (noted). Words that are not codes add the category
  "unparsed" (noted), since the model may have meant a category we cannot name.
- Output cut at the token limit (`truncated`) may end inside a code ("S1" of "S10"), so an unsafe reading
  gets "unparsed" too; a cut after "safe" means the model went on writing: malformed.
- Anything else (empty output, no verdict word first, "unsafeS1", prose): malformed, i.e. verdict None,
  which the guard reports as unsafe with the category "unparsed".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

UNPARSED = "unparsed"  # the category of a verdict or a code we could not read

_CONTROL_TOKEN = re.compile(r"<\|[a-z_0-9]+\|>")
_VERDICT = re.compile(r"(unsafe|safe)(?![a-z0-9_])", re.IGNORECASE)
_CODE = re.compile(r"s(\d{1,3})", re.IGNORECASE)
_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class ParsedVerdict:
    """What the guard model's text says. verdict None: malformed (see the module docstring)."""

    verdict: Literal["safe", "unsafe"] | None
    categories: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def malformed(self) -> bool:
        return self.verdict is None


def parse_verdict(text: str, *, known: Sequence[str] = (), truncated: bool = False) -> ParsedVerdict:
    """Read a Llama Guard answer. `known`: the codes the prompt listed (others are noted, not dropped);
    `truncated`: the model stopped at the token limit rather than at its end-of-turn token."""
    cleaned = _CONTROL_TOKEN.sub(" ", text).strip()
    if not cleaned:
        return ParsedVerdict(None, (UNPARSED,), ("empty output",))
    match = _VERDICT.match(cleaned)
    if match is None:
        return ParsedVerdict(None, (UNPARSED,), (f"no verdict word at the start of {_clip(cleaned)!r}",))
    word, rest = match.group(1).lower(), cleaned[match.end():].strip()
    if word == "safe":
        if rest:
            return ParsedVerdict(None, (UNPARSED,), (f"text after 'safe': {_clip(rest)!r}",))
        if truncated:
            return ParsedVerdict(None, (UNPARSED,), ("the output went on past 'safe' to the token limit",))
        return ParsedVerdict("safe")
    return _unsafe(rest, known, truncated)


def _unsafe(rest: str, known: Sequence[str], truncated: bool) -> ParsedVerdict:
    codes: list[str] = []
    problems: list[str] = []
    unreadable = False
    for item in (p for p in _SEPARATORS.split(rest) if p):
        code = _CODE.fullmatch(item)
        if code is None:
            unreadable = True
            problems.append(f"{_clip(item)!r} is not a category code")
            continue
        name = f"S{int(code.group(1))}"
        if known and name not in known:
            problems.append(f"{name} is not a category this guard asked about")
        if name not in codes:
            codes.append(name)
    if not codes and not unreadable:
        problems.append("no category listed")
    if truncated:
        unreadable = True
        problems.append("the output was cut at the token limit; the last code may be incomplete")
    if unreadable:
        codes.append(UNPARSED)
    return ParsedVerdict("unsafe", tuple(codes), tuple(problems))


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
