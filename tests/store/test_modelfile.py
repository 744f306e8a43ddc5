"""The Modelfile parser: Ollama's instructions to /api/create fields, and a clear error naming the line."""

from __future__ import annotations

import pytest

from llamarun.errors import RequestError
from llamarun.store.model_defaults import ModelDefaults, check_parameters
from llamarun.store.modelfile import parse_modelfile


def test_instructions_become_create_fields() -> None:
    text = ('from base:1b\n\n# comment\nparameter num_ctx 2048\nPARAMETER stop "say \\"bye\\""\n'
            'TEMPLATE """{{ messages }}\n"""\nSYSTEM plain words here  \nMESSAGE assistant """multi\nline"""\n'
            'LICENSE MIT\nLICENSE """second"""\n')
    assert parse_modelfile(text) == {
        "from": "base:1b", "parameters": {"num_ctx": "2048", "stop": ['say "bye"']},
        "template": "{{ messages }}\n", "system": "plain words here",
        "messages": [{"role": "assistant", "content": "multi\nline"}], "license": ["MIT", "second"]}


@pytest.mark.parametrize(("text", "message"), [
    ("FROM a\nADAPTER ./lora.gguf\n", "line 2: ADAPTER"),
    ("FROM a\n\nRUN rm -rf /\n", "line 3: unknown instruction 'RUN'"),
    ('FROM a\nSYSTEM """never closed\n', 'line 2: a """ block is never closed'),
    ('FROM a\nSYSTEM "half\n', "line 2: a quoted value is never closed"),
    ("FROM a\nPARAMETER\n", "line 2: an instruction is missing"),
    ("SYSTEM hi\n", "no FROM line"),
])
def test_bad_modelfiles_name_the_line(text: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as err:
        parse_modelfile(text)
    assert err.value.param == "modelfile"


def test_parameters_are_typed_and_range_checked() -> None:
    assert check_parameters({"top_k": "40", "temperature": "0.5", "stop": "x", "seed": 3.0}) == {
        "top_k": 40, "temperature": 0.5, "stop": ["x"], "seed": 3}
    for bad in ({"top_k": 1.5}, {"top_k": True}, {"stop": [1]}, {"top_p": 7.0}, {"typical_p": 0.5}):
        with pytest.raises(RequestError):
            check_parameters(bad)


def test_settings_layer_over_a_base() -> None:
    base = ModelDefaults(system="old", parameters={"top_k": 1, "temperature": 0.1}, license="L")
    new = ModelDefaults(parameters={"temperature": 0.9}).over(base)
    assert (new.system, new.parameters, new.license) == ("old", {"top_k": 1, "temperature": 0.9}, "L")
    assert ModelDefaults.from_dict(new.to_dict()) == new
