"""SamplingParams: Ollama defaults, greedy(), normalisation and validation errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from llamarun.errors import LlamarunError
from llamarun.sampling.params import MAX_STOP_STRINGS, SamplingParams, SamplingParamsError


def test_defaults_are_ollamas() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.9, 0.0)
    assert (p.repetition_penalty, p.repeat_last_n) == (1.1, 64)
    assert (p.presence_penalty, p.frequency_penalty) == (0.0, 0.0)
    assert p.seed is None and p.max_tokens is None and p.stop == () and p.stop_token_ids == ()
    assert not p.is_greedy and p.uses_penalties


def test_greedy_turns_everything_off() -> None:
    p = SamplingParams.greedy()
    assert p.is_greedy and not p.uses_penalties
    assert (p.top_k, p.top_p, p.min_p) == (0, 1.0, 0.0)
    assert SamplingParams.greedy(max_tokens=5, seed=3).max_tokens == 5


def test_stops_are_normalised_to_tuples_and_hashable() -> None:
    p = SamplingParams(stop=["a", "bc"], stop_token_ids=[2, 7])
    assert p.stop == ("a", "bc") and p.stop_token_ids == (2, 7)
    # A lone string is one stop string, not one per character.
    assert SamplingParams(stop="###").stop == ("###",)
    assert hash(p) == hash(SamplingParams(stop=("a", "bc"), stop_token_ids=(2, 7)))


def test_params_are_frozen_and_replace_revalidates() -> None:
    p = SamplingParams()
    with pytest.raises(AttributeError):
        p.temperature = 1.0  # type: ignore[misc]
    assert p.replace(top_k=5).top_k == 5
    with pytest.raises(SamplingParamsError, match="top_k"):
        p.replace(top_k=-1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.01}, "min_p"),
        ({"min_p": 1.01}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": math.nan}, "repetition_penalty"),
        ({"presence_penalty": math.inf}, "presence_penalty"),
        ({"frequency_penalty": -math.inf}, "frequency_penalty"),
        ({"repeat_last_n": -2}, "repeat_last_n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 3.0}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"stop": ("ok", "")}, "stop string is empty"),
        ({"stop": ("ok", 3)}, "stop string"),
        ({"stop": 3}, "stop"),
        ({"stop": tuple(f"s{i}" for i in range(MAX_STOP_STRINGS + 1))}, "stop strings given"),
        ({"stop": ("x" * 5000,)}, "characters long"),
        ({"stop_token_ids": (1, -2)}, "stop token id"),
        ({"stop_token_ids": ("a",)}, "stop token id"),
    ],
)
def test_bad_values_raise_clear_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(SamplingParamsError, match=field) as info:
        SamplingParams(**kwargs)
    assert isinstance(info.value, LlamarunError)
    assert info.value.param == next(iter(kwargs))  # the field at fault, for the server's 400
    assert info.value.hint  # every error tells the user what to do
    assert "\n" not in str(info.value)


def test_boundary_values_are_accepted() -> None:
    SamplingParams(temperature=0.0, top_p=1.0, min_p=1.0, top_k=0, repeat_last_n=-1, seed=0, max_tokens=1,
                   logprobs=20, presence_penalty=-2.0, stop=tuple("abc" for _ in range(MAX_STOP_STRINGS)))
    SamplingParams(top_p=1e-6, min_p=0.0, seed=2**64 - 1)


def test_importing_params_does_not_import_torch() -> None:
    code = "import sys, llamarun.sampling; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
