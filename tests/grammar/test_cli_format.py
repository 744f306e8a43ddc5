"""`llamarun run --format json|FILE.json`: the flag becomes the request's grammar before the model loads."""

from __future__ import annotations

import argparse
import json

import pytest

from llamarun.cli.run_cmd import format_spec, register, sampling_params
from llamarun.errors import LlamarunError
from llamarun.sampling.grammar_spec import GrammarSpec


def test_json_and_a_schema_file(tmp_path):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    assert format_spec(None) is None
    assert format_spec("json") == GrammarSpec("json")
    assert format_spec(str(path)) == GrammarSpec("json_schema", schema)


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("{not json", "not a JSON file"),
                                              ("[1, 2]", "invalid format")])
def test_bad_format_flags_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LlamarunError, match=message):
        format_spec(str(path))


def test_the_flag_reaches_the_sampling_params():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["run", "m", "hi", "--format", "json"])
    assert sampling_params(args).grammar == GrammarSpec("json")
