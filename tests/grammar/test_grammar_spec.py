"""GrammarSpec: plain, validated, hashable, picklable data that travels in SamplingParams and engine steps."""

from __future__ import annotations

import pickle

import pytest

from llamarun.engine.step import NewRequest, SchedulerOutput
from llamarun.errors import RequestError
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.sampling.params import SamplingParams, SamplingParamsError


def test_equal_schemas_share_a_key_whatever_their_key_order():
    a = GrammarSpec("json_schema", {"type": "object", "properties": {"x": {"type": "integer"}}})
    b = GrammarSpec("json_schema", {"properties": {"x": {"type": "integer"}}, "type": "object"})
    assert a == b and hash(a) == hash(b) and a.key == b.key
    assert a != GrammarSpec("json_schema", {"type": "array"}) and a != GrammarSpec("json")


def test_choice_is_stored_as_a_tuple_and_params_stay_hashable():
    spec = GrammarSpec("choice", ["yes", "no"])
    assert spec.value == ("yes", "no")
    params = SamplingParams(grammar=spec)
    assert hash(params) == hash(SamplingParams(grammar=GrammarSpec("choice", ("yes", "no"))))


def test_a_step_with_a_grammar_pickles():
    params = SamplingParams.greedy(grammar=GrammarSpec("json_schema", {"type": "object"}))
    step = SchedulerOutput(new_requests=[NewRequest("r", params, [1, 2])])
    back = pickle.loads(pickle.dumps(step))
    assert back.new_requests[0].params.grammar == params.grammar
    assert back.new_requests[0].params.grammar.key == params.grammar.key


@pytest.mark.parametrize("kind, value, message", [
    ("yaml", "x", "not one of"),
    ("json", {"type": "object"}, "takes no value"),
    ("json_schema", "[1]", "must be an object"),
    ("json_schema", {"x": float("nan")}, "not plain JSON"),
    ("regex", "", "non-empty string"),
    ("ebnf", 3, "non-empty string"),
    ("choice", "yes", "list of non-empty strings"),
    ("choice", [], "list of non-empty strings"),
    ("choice", ["a", ""], "list of non-empty strings"),
])
def test_bad_specs_are_request_errors(kind, value, message):
    with pytest.raises(RequestError, match=message) as err:
        GrammarSpec(kind, value)
    assert err.value.param == "grammar"


def test_params_refuse_a_grammar_that_is_not_a_spec():
    with pytest.raises(SamplingParamsError, match="not a GrammarSpec"):
        SamplingParams(grammar={"type": "object"})
