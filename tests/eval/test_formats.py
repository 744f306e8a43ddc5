"""Format names: the table maps names to loader options; unknown or unavailable names list what exists."""

from __future__ import annotations

import pytest

from llamarun.errors import LlamarunError
from llamarun.eval import formats
from llamarun.eval.formats import available_formats, load_options, parse_formats
from llamarun.quant.modes import WEIGHT_MODES


def test_todays_formats_are_available_and_map_to_weights_modes() -> None:
    assert {"exact", "bf16", "int8"} <= set(available_formats())
    assert load_options("exact") == {"weights": "exact"}
    assert load_options("bf16") == {"weights": "exact", "dtype": "bfloat16"}
    assert load_options("int8") == {"weights": "int8"}
    assert {"fp8", "int4", "int4-g64"} <= set(available_formats())  # the quantization methods' modes
    for name in available_formats():
        assert load_options(name)["weights"].split("-g")[0] in WEIGHT_MODES  # int4-g64: int4, group 64


def test_unknown_format_lists_the_available_ones() -> None:
    with pytest.raises(LlamarunError) as err:
        load_options("int3")
    text = str(err.value)
    assert "unknown format 'int3'" in text
    for name in available_formats():
        assert name in text


def test_a_format_whose_mode_the_loader_lacks_is_unavailable_not_unknown(monkeypatch) -> None:
    monkeypatch.setitem(formats.FORMATS, "nf4", {"weights": "nf4"})
    assert "nf4" not in available_formats()
    with pytest.raises(LlamarunError, match="'nf4' is not available in this build"):
        load_options("nf4")


def test_a_new_weights_mode_becomes_a_format_through_the_table_alone(monkeypatch) -> None:
    import llamarun.quant.modes as modes

    monkeypatch.setitem(formats.FORMATS, "nf4", {"weights": "nf4"})
    monkeypatch.setattr(modes, "WEIGHT_MODES", (*modes.WEIGHT_MODES, "nf4"))
    assert load_options("nf4") == {"weights": "nf4"}


def test_parse_formats() -> None:
    assert parse_formats("exact, int8") == ["exact", "int8"]
    with pytest.raises(LlamarunError, match="listed twice"):
        parse_formats("exact,int8,exact")
    with pytest.raises(LlamarunError, match="no formats"):
        parse_formats(" , ")
    with pytest.raises(LlamarunError, match="unknown format 'q5'"):
        parse_formats("exact,q5")
