"""Every shape of Llama Guard answer gets a defined reading; a malformed one is never safe."""

from __future__ import annotations

import pytest

from llamarun.safety.llama_guard.categories import CODES_1B, CODES_8B
from llamarun.safety.llama_guard.parse import UNPARSED, parse_verdict

# (model text, verdict, categories)
SHAPES = [
    # what the model is trained to write, with the blank line its template leaves it to write first
    ("safe", "safe", ()),
    ("\n\nsafe", "safe", ()),
    ("unsafe\nS1", "unsafe", ("S1",)),
    ("\n\nunsafe\nS1,S10", "unsafe", ("S1", "S10")),
    # whitespace, case and stray control-token text
    ("  safe  \n\n", "safe", ()),
    ("Safe", "safe", ()),
    ("UNSAFE\ns1, s10 ", "unsafe", ("S1", "S10")),
    ("unsafe\n S2 ,S3\n", "unsafe", ("S2", "S3")),
    ("unsafe\n\nS5", "unsafe", ("S5",)),
    ("safe<|eot_id|>", "safe", ()),
    ("<|eot_id|>unsafe\nS4<|eom_id|>", "unsafe", ("S4",)),
    # codes on the verdict's line, on several lines, separated by spaces, repeated
    ("unsafe S1", "unsafe", ("S1",)),
    ("unsafe\nS1\nS2", "unsafe", ("S1", "S2")),
    ("unsafe\nS1 S2", "unsafe", ("S1", "S2")),
    ("unsafe\nS1,S1,S01", "unsafe", ("S1",)),
    # unsafe without a category, or with an empty list
    ("unsafe", "unsafe", ()),
    ("unsafe\n", "unsafe", ()),
    ("unsafe\n,", "unsafe", ()),
    # a code the guard did not ask about is kept (noted), words that are not codes become "unparsed"
    ("unsafe\nS15", "unsafe", ("S15",)),
    ("unsafe\nS1,Violence", "unsafe", ("S1", UNPARSED)),
    ("unsafe\nViolent Crimes", "unsafe", (UNPARSED,)),
    ("unsafe\nS1,S", "unsafe", ("S1", UNPARSED)),
    # malformed: no verdict word first, a verdict glued to more text, or text after "safe"
    ("", None, (UNPARSED,)),
    ("   \n\n ", None, (UNPARSED,)),
    ("<|eot_id|>", None, (UNPARSED,)),
    ("I cannot help with that.", None, (UNPARSED,)),
    ("The content is safe", None, (UNPARSED,)),
    ("S1", None, (UNPARSED,)),
    ("unsafeS1", None, (UNPARSED,)),
    ("safety first", None, (UNPARSED,)),
    ("safe\nS1", None, (UNPARSED,)),
    ("safe.", None, (UNPARSED,)),
    ("safe\nsafe", None, (UNPARSED,)),
]


@pytest.mark.parametrize(("text", "verdict", "categories"), SHAPES)
def test_shapes(text, verdict, categories):
    parsed = parse_verdict(text, known=CODES_8B)
    assert (parsed.verdict, parsed.categories) == (verdict, categories)
    assert parsed.malformed == (verdict is None)
    if verdict is None:
        assert parsed.problems  # a malformed reading always says why


@pytest.mark.parametrize("text", [t for t, v, _ in SHAPES if v is None])
def test_malformed_is_never_safe(text):
    assert parse_verdict(text).verdict != "safe"


def test_problems_name_what_was_odd():
    assert "no category listed" in parse_verdict("unsafe").problems
    assert any("S15" in p for p in parse_verdict("unsafe\nS15", known=CODES_8B).problems)
    assert any("S14" in p for p in parse_verdict("unsafe\nS14", known=CODES_1B).problems)
    assert parse_verdict("unsafe\nS14", known=CODES_8B).problems == ()
    assert parse_verdict("unsafe\nS1,S10").problems == ()
    assert parse_verdict("safe").problems == ()


@pytest.mark.parametrize(("text", "verdict", "categories"), [
    ("unsafe\nS1", "unsafe", ("S1", UNPARSED)),  # "S1" may be the start of "S10"..."S14"
    ("unsafe\nS1,S1", "unsafe", ("S1", UNPARSED)),
    ("\n\nunsafe", "unsafe", (UNPARSED,)),
    ("safe", None, (UNPARSED,)),  # the model went on writing after "safe"
    ("safe\n\n", None, (UNPARSED,)),
])
def test_truncated_output(text, verdict, categories):
    parsed = parse_verdict(text, truncated=True)
    assert (parsed.verdict, parsed.categories) == (verdict, categories)
    assert any("token limit" in p for p in parsed.problems)
