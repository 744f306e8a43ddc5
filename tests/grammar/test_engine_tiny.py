"""Grammars through the batched engine on a tiny random model (padded logits, byte vocabulary)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from tiny_grammar_model import LOGITS, STOP, run_all, text, tiny_engine, tiny_model

from llamarun.errors import LlamarunError, RequestError
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams

NESTED = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 3, "maximum": 70},
        "ratio": {"type": "number", "minimum": -1.5, "maximum": 2},
        "kind": {"enum": ["alpha", "beta", "gamma"]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "owner": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 6},
            "ok": {"type": "boolean"}}, "required": ["name", "ok"], "additionalProperties": False},
        "points": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                   "minItems": 1, "maxItems": 4},
    },
    "required": ["id", "ratio", "kind", "code", "owner", "points"],
    "additionalProperties": False,
}
PROMPTS = [[10, 20, 30], [65, 66, 67, 68], [120] * 20, list(range(40, 90)), [7]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("grammar") / "hf")


def params(spec: GrammarSpec | None, seed: int | None = None, **kw) -> SamplingParams:
    if seed is None:
        return SamplingParams.greedy(max_tokens=400, grammar=spec, **kw)
    return SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=seed,
                          max_tokens=400, grammar=spec, **kw)


def test_every_output_validates_against_a_nested_schema(tiny):
    model, vocab = tiny
    spec = GrammarSpec("json_schema", NESTED)
    out = run_all(tiny_engine(model, vocab), [(p, params(spec, seed=i)) for i, p in enumerate(PROMPTS)]
                  + [(PROMPTS[0], params(spec))])
    for ids in out.values():
        assert STOP not in ids and all(i < 260 for i in ids)
        jsonschema.validate(json.loads(text(ids, vocab)), NESTED)


def test_regex_choice_and_ebnf(tiny):
    # Any-JSON ("json") runs on the default model: a random model's free strings never end.
    model, vocab = tiny
    specs = [GrammarSpec("regex", r"[a-c]{2,5}@(x|yz)\.[0-9]+"), GrammarSpec("choice", ["red", "green", "blue"]),
             GrammarSpec("ebnf", 'root ::= "(" [0-9]+ ("+" [0-9]+)* ")"')]
    reqs = [(PROMPTS[i % len(PROMPTS)], params(s, seed=i)) for i, s in enumerate(specs)]
    out = run_all(tiny_engine(model, vocab), reqs)
    assert re.fullmatch(r"[a-c]{2,5}@(x|yz)\.[0-9]+", text(out["r0"], vocab))
    assert text(out["r1"], vocab) in ("red", "green", "blue")
    assert re.fullmatch(r"\([0-9]+(\+[0-9]+)*\)", text(out["r2"], vocab))


def test_without_a_grammar_the_random_model_breaks_the_schema(tiny):
    # The test above would pass vacuously if the mask were never applied; unconstrained, it is not JSON.
    model, vocab = tiny
    out = run_all(tiny_engine(model, vocab), [(PROMPTS[0], SamplingParams.greedy(max_tokens=40))])
    with pytest.raises(ValueError):
        json.loads(text(out["r0"], vocab))


def test_batched_with_and_without_grammars_equals_alone(tiny):
    model, vocab = tiny
    spec = GrammarSpec("json_schema", NESTED)
    reqs = [(p, params(spec if i % 2 == 0 else None)) for i, p in enumerate(PROMPTS)]
    reqs = [(p, q.replace(max_tokens=60)) for p, q in reqs]
    alone = [run_all(tiny_engine(model, vocab), [r])["r0"] for r in reqs]
    together = run_all(tiny_engine(model, vocab), reqs)
    assert [together[f"r{i}"] for i in range(len(reqs))] == alone


def test_preemption_keeps_the_grammar_state(tiny):
    model, vocab = tiny
    spec = GrammarSpec("json_schema", NESTED)
    reqs = [(p, params(spec, seed=i)) for i, p in enumerate(PROMPTS)]
    roomy = tiny_engine(model, vocab)
    expected = run_all(roomy, reqs)
    tight = tiny_engine(model, vocab, kv_tokens=512, context_length=512)
    assert run_all(tight, reqs) == expected
    assert tight.scheduler.num_preemptions > 0 and roomy.scheduler.num_preemptions == 0
    for ids in expected.values():
        jsonschema.validate(json.loads(text(ids, vocab)), NESTED)


def test_padded_logits_and_stop_are_never_text(tiny):
    _model, vocab = tiny
    assert vocab.logits_size == LOGITS and len(vocab.tokens) == 260 and vocab.tokens[STOP] == b""


def test_an_uncompilable_schema_is_refused_at_add(tiny):
    model, vocab = tiny
    engine = tiny_engine(model, vocab)
    with pytest.raises(RequestError, match="regular expression cannot be enforced"):
        engine.add_request([1, 2], params(GrammarSpec("regex", "(ab")))
    assert not engine.has_unfinished


def test_an_engine_without_vocabulary_refuses_grammars(tiny):
    model, _ = tiny
    with pytest.raises(LlamarunError, match="without a vocabulary"):
        tiny_engine(model, None).add_request([1, 2], params(GrammarSpec("json")))
