"""Llama Guard 3's hazard categories, and which of them a guard asks the model about.

Two names per category: the short name the model was trained to read in its prompt ("S3: Sex Crimes."),
which must stay byte-exact, and the model card's longer name ("Sex-Related Crimes"), which is what people
read in a verdict's detail. The 8B knows S1-S14; the 1B was trained without S14 (Code Interpreter Abuse).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llamarun.errors import LlamarunError

# Code -> the text after "Sk: " in the prompt, as the models' own chat templates write it.
PROMPT_NAMES: dict[str, str] = {
    "S1": "Violent Crimes.",
    "S2": "Non-Violent Crimes.",
    "S3": "Sex Crimes.",
    "S4": "Child Exploitation.",
    "S5": "Defamation.",
    "S6": "Specialized Advice.",
    "S7": "Privacy.",
    "S8": "Intellectual Property.",
    "S9": "Indiscriminate Weapons.",
    "S10": "Hate.",
    "S11": "Self-Harm.",
    "S12": "Sexual Content.",
    "S13": "Elections.",
    "S14": "Code Interpreter Abuse.",
}

# Code -> the hazard's name in the model card (for people, never for the prompt).
HAZARD_NAMES: dict[str, str] = {
    "S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation", "S5": "Defamation", "S6": "Specialized Advice", "S7": "Privacy",
    "S8": "Intellectual Property", "S9": "Indiscriminate Weapons", "S10": "Hate",
    "S11": "Suicide & Self-Harm", "S12": "Sexual Content", "S13": "Elections", "S14": "Code Interpreter Abuse",
}

CODES_8B: tuple[str, ...] = tuple(PROMPT_NAMES)  # S1..S14
CODES_1B: tuple[str, ...] = CODES_8B[:13]  # S1..S13


def normalise_codes(codes: Sequence[str], what: str = "excluded category") -> tuple[str, ...]:
    """`codes` as canonical "Sk" strings ("s6 " -> "S6"), in order, without repeats; a code outside
    S1..S14 is a user error."""
    out: list[str] = []
    for raw in codes:
        code = str(raw).strip().upper()
        if code not in PROMPT_NAMES:
            raise LlamarunError(f"{what} {raw!r} is not a Llama Guard 3 category",
                                "give codes S1 to S14 (S14 exists only on the 8B)")
        if code not in out:
            out.append(code)
    return tuple(out)


def active_categories(model_codes: Sequence[str], excluded: Sequence[str] = (),
                      custom: Mapping[str, str] | None = None) -> dict[str, str]:
    """The categories a prompt lists: code -> prompt text, in order, excluded codes removed.

    The remaining categories keep their own numbers (excluding S6 leaves S5 then S7): the model's verdict
    names categories by code, and both Meta's 1B template (`excluded_category_keys`) and its reference
    shield code drop the excluded lines without renumbering. `custom` replaces the whole list (code ->
    description, as the 1B template's `categories` variable takes it). Excluding everything is refused:
    a guard asked about nothing should be turned off instead.
    """
    base = dict(custom) if custom is not None else {c: PROMPT_NAMES[c] for c in model_codes}
    if not base:
        raise LlamarunError("the Llama Guard category list is empty", "give at least one category")
    skip = {str(c).strip().upper() for c in excluded}
    kept = {code: text for code, text in base.items() if code.upper() not in skip}
    if not kept:
        raise LlamarunError("every Llama Guard category is excluded", "exclude fewer, or turn the guard off")
    return kept


def describe(codes: Sequence[str], custom: Mapping[str, str] | None = None) -> str:
    """'S1 Violent Crimes, S10 Hate' for a verdict's detail; unknown codes are named as they are."""
    names = []
    for code in codes:
        name = HAZARD_NAMES.get(code) if custom is None else custom.get(code, "").split("\n")[0].rstrip(".")
        names.append(f"{code} {name}" if name else code)
    return ", ".join(names)
