"""GuardReport: what the guards found in one request, in the form the APIs put on the response.

The input judgement is the request's; output judgements are per generation (an OpenAI choice). The
report shows only what was flagged: a response where every guard passed looks exactly as it would with
no guards, so clients that know nothing of guards see nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llamarun.safety.pipeline import Judgement

CONTENT_FILTER = "content_filter"  # the finish reason of a refused or cut reply, in both APIs


def refusal_text(judgement: Judgement, *, after_text: bool = False) -> str:
    """The short refusal a blocked request or reply gets as its text (the categories name what was found)."""
    blocking = [f for f in judgement.flagged if f.action == "block"]
    what = ", ".join(dict.fromkeys(c for f in blocking for c in f.verdict.categories))
    guards = ", ".join(dict.fromkeys(f.verdict.guard for f in blocking))
    text = f"Sorry, I can't help with that. (Blocked by the safety guard {guards}{': ' + what if what else ''}.)"
    return "\n\n" + text if after_text else text


@dataclass
class GuardReport:
    """The judgements of one request: its input, and each generation's output (by index)."""

    input: Judgement = field(default_factory=Judgement)
    outputs: dict[int, Judgement] = field(default_factory=dict)

    @property
    def input_blocked(self) -> bool:
        return self.input.blocked

    def set_output(self, index: int, judgement: Judgement) -> None:
        """The latest judgement of generation `index` (each check covers the whole reply so far)."""
        self.outputs[index] = judgement

    def to_json(self, index: int | None = None) -> dict[str, Any] | None:
        """The flagged findings of the input and of generation `index` (all generations when None), as
        {"action": "block"|"warn", "categories": [...], "verdicts": [...]}; None when nothing was flagged."""
        picked = self.outputs.items() if index is None else [(index, self.outputs.get(index, Judgement()))]
        verdicts = [f.to_json() for f in self.input.flagged]
        verdicts += [{**f.to_json(), "index": i} for i, j in picked for f in j.flagged]
        if not verdicts:
            return None
        action = "block" if any(v["action"] == "block" for v in verdicts) else "warn"
        categories = list(dict.fromkeys(c for v in verdicts for c in v["categories"]))
        return {"action": action, "categories": categories, "verdicts": verdicts}


def guard_field(reply: Any, index: int | None = None, name: str = "guard") -> dict[str, Any]:
    """{name: the report's JSON} for a response of `reply` (a chat service Reply), or {} when nothing was
    flagged or no guards ran. The server's routes merge it into their last object."""
    report = getattr(reply, "guard", None)
    found = report.to_json(index) if report is not None else None
    return {name: found} if found is not None else {}
