"""The score: P("unsafe") read at the verdict token, past the blank line the template leaves the model."""

from __future__ import annotations

import math
from pathlib import Path

import llama_models
import pytest

from llamarun.engine.step import SampledToken
from llamarun.safety.llama_guard.score import unsafe_score, verdict_token_id
from llamarun.text.tiktoken_tokenizer import TiktokenTokenizer

NL2, NL, UNSAFE, SAFE, EOT = 271, 198, 39257, 19193, 128009


@pytest.fixture(scope="module")
def tok() -> TiktokenTokenizer:
    return TiktokenTokenizer.from_file(Path(llama_models.__file__).parent / "llama3" / "tokenizer.model")


def lp(p: float) -> float:
    return math.log(p)


def test_the_verdict_words_are_single_llama3_tokens(tok):
    assert verdict_token_id(tok) == UNSAFE and verdict_token_id(tok, "safe") == SAFE
    assert tok.decode([UNSAFE]) == "unsafe" and tok.decode([NL2]) == "\n\n"


def test_chosen_unsafe_after_the_blank_line(tok):
    tokens = [SampledToken(NL2, lp(0.99), [(NL2, lp(0.99))]),
              SampledToken(UNSAFE, lp(0.7), [(UNSAFE, lp(0.7)), (SAFE, lp(0.29))]), SampledToken(NL, lp(0.9))]
    score = unsafe_score(tokens, tok, UNSAFE)
    assert score.position == 1 and score.probability == pytest.approx(0.7) and not score.bound


def test_unsafe_among_the_alternatives(tok):
    tokens = [SampledToken(NL, lp(0.5), [(NL, lp(0.5))]), SampledToken(NL, lp(0.5), [(NL, lp(0.5))]),
              SampledToken(SAFE, lp(0.8), [(SAFE, lp(0.8)), (UNSAFE, lp(0.15))])]
    score = unsafe_score(tokens, tok, UNSAFE)
    assert score.position == 2 and score.probability == pytest.approx(0.15)


def test_unsafe_outside_the_top_tokens_gives_the_last_ones_probability_as_a_bound(tok):
    tokens = [SampledToken(SAFE, lp(0.9), [(SAFE, lp(0.9)), (NL2, lp(0.05)), (NL, lp(0.01))])]
    score = unsafe_score(tokens, tok, UNSAFE)
    assert score.bound and score.probability == pytest.approx(0.01)


def test_no_score(tok):
    assert unsafe_score([], tok, UNSAFE) is None  # nothing generated
    assert unsafe_score([SampledToken(NL2), SampledToken(NL)], tok, UNSAFE) is None  # whitespace only
    assert unsafe_score([SampledToken(SAFE)], tok, UNSAFE) is None  # no log-probabilities returned
    assert unsafe_score([SampledToken(UNSAFE, lp(0.9))], tok, None) is None  # no single "unsafe" token


def test_an_immediate_end_of_turn_is_the_verdict_position(tok):
    tokens = [SampledToken(EOT, lp(0.6), [(EOT, lp(0.6)), (UNSAFE, lp(0.3))])]
    score = unsafe_score(tokens, tok, UNSAFE)
    assert score.position == 0 and score.probability == pytest.approx(0.3)
