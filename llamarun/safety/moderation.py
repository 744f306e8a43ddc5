"""Verdicts in the shapes of the moderation endpoints: OpenAI's `/v1/moderations` and our `/api/moderate`.

OpenAI's categories are fixed names (`violence`, `hate`, `self-harm`, ...). Llama Guard 3's hazard
categories map onto them where they mean the same thing; the rest (defamation, specialized advice,
privacy, intellectual property, elections, code-interpreter abuse) have no OpenAI name. Every category a
guard reports is kept under its own name too ("S1", "injection", "language:ja", "CWE-327"), beside
OpenAI's, so nothing a guard found is lost in the mapping.
"""

from __future__ import annotations

from typing import Any

from llamarun.safety.pipeline import Judgement

OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                     "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                     "sexual/minors", "violence", "violence/graphic")

# Llama Guard 3 (MLCommons hazard taxonomy) -> OpenAI moderation categories with the same meaning.
LLAMA_GUARD_TO_OPENAI: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),  # violent crimes
    "S2": ("illicit",),  # non-violent crimes
    "S3": ("sexual", "illicit"),  # sex-related crimes
    "S4": ("sexual/minors",),  # child sexual exploitation
    "S9": ("illicit/violent",),  # indiscriminate weapons
    "S10": ("hate",),  # hate
    "S11": ("self-harm",),  # suicide and self-harm
    "S12": ("sexual",),  # sexual content
}


def openai_result(judgement: Judgement) -> dict[str, Any]:
    """One entry of `/v1/moderations` `results`: flagged, categories and scores under OpenAI's names and ours,
    the input types each applies to, and our verdicts in `llamarun_guard`."""
    categories = dict.fromkeys(OPENAI_CATEGORIES, False)
    scores = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    for f in judgement.flagged:
        v = f.verdict
        score = 1.0 if v.score is None else float(v.score)
        names = [*v.categories] or [v.guard]
        for ours in names:
            for name in (ours, *(LLAMA_GUARD_TO_OPENAI.get(ours, ()) if v.guard == "llama_guard" else ())):
                categories[name] = True
                scores[name] = max(scores.get(name, 0.0), score)
    for f in judgement.findings:  # a safe verdict's score still says how close it came
        if f.verdict.safe and f.verdict.score is not None:
            for ours in f.verdict.categories:
                scores[ours] = max(scores.get(ours, 0.0), float(f.verdict.score))
    return {"flagged": bool(judgement.flagged), "categories": categories, "category_scores": scores,
            "category_applied_input_types": {name: ["text"] for name in categories},
            "llamarun_guard": [f.to_json() for f in judgement.findings]}


def ollama_result(judgement: Judgement) -> dict[str, Any]:
    """One entry of `/api/moderate` `results`: flagged, what the pipeline would do (the strictest action of
    the guards' modes), the categories found, and every guard's verdict."""
    actions = [f.action for f in judgement.findings]
    action = "block" if "block" in actions else "warn" if "warn" in actions else "pass"
    return {"flagged": bool(judgement.flagged), "action": action, "categories": judgement.categories(),
            "verdicts": [f.to_json() for f in judgement.findings]}
