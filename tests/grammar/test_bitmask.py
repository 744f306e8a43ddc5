"""The packed grammar mask: bit layout, rows without a grammar untouched, padded logits never allowed."""

from __future__ import annotations

import pytest
import torch

from llamarun.errors import RequestError
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams
from llamarun.sampling.sampler import Sampler, SamplerState
from llamarun.structured.bitmask import GrammarMasker, unpack_bits
from llamarun.structured.engine import GrammarMatcher, compile_grammar
from llamarun.structured.vocab import GrammarVocab

# Ten digit tokens, "a", "b", a stop token (empty), then 3 padded logits the tokenizer does not know.
VOCAB = GrammarVocab(tuple(str(d).encode() for d in range(10)) + (b"a", b"b", b""), stop_ids=(12,), logits_size=16)


def test_unpack_bits_matches_the_bit_layout():
    words = torch.randint(-(2**31), 2**31, (3, 4), dtype=torch.int64).to(torch.int32)  # [3, 4]
    got = unpack_bits(words, 100)  # [3, 100]
    want = [[bool((int(words[r, t // 32]) >> (t % 32)) & 1) for t in range(100)] for r in range(3)]
    assert got.tolist() == want


def test_only_grammar_rows_are_masked_and_padding_is_never_allowed():
    logits = torch.randn(3, 16)  # [B, V]
    matcher = GrammarMatcher(compile_grammar(VOCAB, GrammarSpec("regex", "[0-9]+a")))
    out = GrammarMasker().apply(logits, [1], [matcher])
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    allowed = torch.isfinite(out[1]).nonzero().flatten().tolist()
    assert allowed == list(range(10))


def test_the_sampler_follows_the_grammar_to_its_stop_token():
    matcher = GrammarMatcher(compile_grammar(VOCAB, GrammarSpec("choice", ["12", "ab"])))
    state = SamplerState(SamplingParams.greedy(), grammar=matcher)
    free = SamplerState(SamplingParams.greedy())
    sampler, picked = Sampler(), []
    for _ in range(3):
        logits = torch.zeros(2, 16)  # [B, V]
        logits[:, 13] = 9.0  # a padded id the model likes best
        logits[:, 11] = 5.0  # then "b" (which no choice starts with)
        logits[:, 10] = 1.0  # then "a" (which "ab" starts with)
        tokens = sampler(logits, [state, free]).tolist()
        assert tokens[1] == 13  # the row without a grammar is untouched
        state.append(tokens[0])
        free.append(tokens[1])
        picked.append(tokens[0])
    assert picked == [10, 11, 12] and matcher.finished  # "a", "b", stop


def test_an_unenforceable_grammar_names_its_problem():
    with pytest.raises(RequestError, match="grammar cannot be enforced: ") as err:
        compile_grammar(VOCAB, GrammarSpec("ebnf", "root ::= missing_rule"))
    assert err.value.param == "grammar" and "missing_rule" in str(err.value)
    assert ".cc:" not in str(err.value)  # the engine's C++ source location is not the client's business


def test_a_vocabulary_without_stop_tokens_refuses_grammars():
    vocab = GrammarVocab((b"a",), stop_ids=(), logits_size=1)
    with pytest.raises(RequestError, match="no stop token"):
        compile_grammar(vocab, GrammarSpec("json"))
