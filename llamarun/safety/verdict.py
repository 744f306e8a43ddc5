"""The types every guard and the guard pipeline share.

A guard only judges: it returns a Verdict for a Subject. What happens next (nothing, a warning on the
response and in the log, or a refusal) is the guard's GuardMode, applied by the pipeline. Keeping the two
apart lets one guard model serve a strict deployment and a lenient one, and lets `/api/moderate` report
verdicts with no mode at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

from llamarun.errors import LlamarunError

# Where in a request the text comes from. "input": the user's turn before it reaches the model; "output":
# the model's reply (whole, or the part streamed so far); "tool_result": a tool's answer fed back to the model
# (the place indirect prompt injection hides); "tool_call": the arguments of a call the model wants to make.
SubjectKind = Literal["input", "output", "tool_result", "tool_call"]


class GuardMode(StrEnum):
    """What the pipeline does with a guard's unsafe verdict."""

    OFF = "off"  # the guard does not run
    WARN = "warn"  # the response carries the verdict and the server logs it; the request goes on
    BLOCK = "block"  # the request ends with a refusal the client can tell apart (finish_reason "content_filter")

    @classmethod
    def parse(cls, value: str, flag: str) -> GuardMode:
        """`value` as a mode; anything else is a user error naming `flag`."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            raise LlamarunError(f"{flag} '{value}' is not a guard mode", "give off, warn or block") from None


@dataclass(frozen=True)
class Message:
    """One turn of the conversation a subject belongs to (role: system, user, assistant or tool)."""

    role: str
    content: str


@dataclass(frozen=True)
class Subject:
    """The text a guard judges, and the conversation before it (Llama Guard judges a turn in context)."""

    kind: SubjectKind
    text: str
    history: tuple[Message, ...] = ()  # earlier turns, oldest first; excludes `text` itself
    language_hint: str | None = None  # e.g. "python" for code in a code-interpreter call
    partial: bool = False  # a stream's reply so far (checked again whole at the end): a guard may check faster


@dataclass(frozen=True)
class Verdict:
    """One guard's judgement of one subject.

    categories name what was found, in the guard's own terms: Llama Guard's "S1".."S14", Prompt Guard's
    "injection"/"jailbreak", Code Shield's "CWE-327"-style ids, the language policy's "language:ja".
    score is the guard's probability (0..1) that the subject is unsafe, when it has one.
    """

    guard: str  # "llama_guard", "prompt_guard", "code_shield", "language"
    safe: bool
    categories: tuple[str, ...] = ()
    score: float | None = None
    detail: str = ""  # one line for people: why, in words
    extra: dict = field(default_factory=dict, compare=False)  # guard-specific data for /api/moderate


class Guard(Protocol):
    """Anything that judges subjects. `kinds` says which subjects it wants; the pipeline sends it no others."""

    name: str
    kinds: frozenset[str]

    async def check(self, subject: Subject) -> Verdict:
        """Judge one subject. Must not raise for any text; a guard that cannot run raises LlamarunError."""
        ...
