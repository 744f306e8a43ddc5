"""Fake guards implementing safety/verdict.py's Guard protocol, so the pipeline is tested without guard models.

`MarkerGuard` flags any text containing one of its marker words (the category is the marker's), and records
every subject it saw; `RaisingGuard` raises; `SlowGuard` takes `delay` seconds and passes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llamarun.safety.pipeline import GuardPipeline, GuardSlot
from llamarun.safety.verdict import GuardMode, Subject, Verdict

UNSAFE = {"BOMB": "S9", "HATEWORD": "S10"}  # marker word -> category, for MarkerGuard
ALL_KINDS = frozenset({"input", "output", "tool_result", "tool_call"})


@dataclass
class MarkerGuard:
    """Unsafe when the text holds a marker (case-insensitive): {"BOMB": "S9"} flags "bomb" as S9."""

    markers: dict[str, str]
    name: str = "marker"
    kinds: frozenset[str] = ALL_KINDS
    score: float | None = 0.9
    seen: list[Subject] = field(default_factory=list)

    async def check(self, subject: Subject) -> Verdict:
        self.seen.append(subject)
        await asyncio.sleep(0)
        found = tuple(cat for word, cat in self.markers.items() if word.lower() in subject.text.lower())
        if found:
            return Verdict(self.name, False, found, self.score, f"found {', '.join(found)}")
        return Verdict(self.name, True, (), 1 - self.score if self.score is not None else None)

    def texts(self, kind: str) -> list[str]:
        return [s.text for s in self.seen if s.kind == kind]


@dataclass
class RaisingGuard:
    name: str = "broken"
    kinds: frozenset[str] = ALL_KINDS

    async def check(self, subject: Subject) -> Verdict:
        raise RuntimeError("the guard model crashed")


@dataclass
class SlowGuard:
    delay: float = 0.3
    name: str = "slow"
    kinds: frozenset[str] = ALL_KINDS
    calls: int = 0

    async def check(self, subject: Subject) -> Verdict:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return Verdict(self.name, True)


def pipeline(*pairs: tuple[object, str], **kwargs: object) -> GuardPipeline:
    """A pipeline of (guard, mode) pairs."""
    return GuardPipeline([GuardSlot(g, GuardMode(m)) for g, m in pairs], **kwargs)  # type: ignore[arg-type]
