"""The weights knob: which formats a device can run, group sizes that fit the model, and the errors otherwise."""

from __future__ import annotations

import pytest
import torch

from llamarun.bench.random_weights import PRESETS
from llamarun.errors import LlamarunError
from llamarun.quant.int4 import Int4Method
from llamarun.quant.modes import default_int4_group, resolve_weights, weight_bytes, weights_mode

LLAMA8B = PRESETS["llama3.1-8b"]
TINY = PRESETS["tiny"]  # hidden 64, intermediate 160: neither 128 nor 64 divides every input


def test_online_formats_resolve_on_cpu():
    assert resolve_weights("int8", device="cpu", config=LLAMA8B) == "int8"
    assert resolve_weights("int4", device="cpu", config=LLAMA8B) == "int4-g128"
    assert resolve_weights("int4-g64", device="cpu", config=LLAMA8B) == "int4-g64"
    assert resolve_weights("auto", device="cpu", config=LLAMA8B, quantized=True) == "int8"
    assert resolve_weights("auto", device="cpu", config=LLAMA8B) == "exact"


def test_fp8_on_a_cpu_names_formats_that_run():
    with pytest.raises(LlamarunError, match=r"compute capability 8\.9") as err:
        resolve_weights("fp8", device="cpu", config=LLAMA8B)
    assert "int8" in str(err.value) and "int4" in str(err.value)


def test_fp8_on_a_gpu_without_fp8_names_formats_that_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(LlamarunError, match=r"NVIDIA A100 has 8\.0") as err:
        resolve_weights("fp8", device="cuda", config=LLAMA8B)
    assert "--quantize int8" in str(err.value) and "int4" in str(err.value)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_weights("fp8", device="cuda", config=LLAMA8B) == "fp8"


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(LlamarunError, match="unknown weights format 'nf4'") as err:
        resolve_weights("nf4", device="cpu", config=LLAMA8B)
    assert "fp8" in str(err.value) and "int4" in str(err.value)


def test_group_size_that_does_not_divide_names_what_would_run():
    with pytest.raises(LlamarunError, match="group size 128 does not divide the input size 64") as err:
        resolve_weights("int4", device="cpu", config=TINY)
    assert "int8" in str(err.value)  # neither 128 nor 64 divides 160
    smol = LLAMA8B.replace(hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3, head_dim=64)
    with pytest.raises(LlamarunError, match="input size 576") as err:
        resolve_weights("int4-g128", device="cpu", config=smol)
    assert "--group-size 64" in str(err.value) and "the format int4-g64" in str(err.value)  # run and eval
    with pytest.raises(LlamarunError, match="not offered"):
        resolve_weights("int4-g32", device="cpu", config=LLAMA8B)


def test_bare_int4_takes_the_largest_group_that_fits_the_model():
    """No --group-size: 128, else 64 (the default model is 576 wide), as llama.cpp falls back to a smaller block;
    an asked-for group is never changed, and a model that no group fits is still a clear error."""
    smol = LLAMA8B.replace(hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3, head_dim=64)
    assert default_int4_group(LLAMA8B) == 128 and default_int4_group(smol) == 64
    assert resolve_weights("int4", device="cpu", config=smol) == "int4-g64"
    assert resolve_weights(weights_mode("int4", None, "exact"), device="cpu", config=smol) == "int4-g64+head-exact"
    with pytest.raises(LlamarunError, match="group size 128 does not divide the input size 576"):
        resolve_weights(weights_mode("int4", 128), device="cpu", config=smol)
    assert default_int4_group(TINY) == 128  # none fits (160): the error names 128 and offers int8
    with pytest.raises(LlamarunError, match="no online int4 group size fits"):
        resolve_weights("int4", device="cpu", config=TINY)


def test_group_size_only_with_int4():
    assert weights_mode("int4", 64) == "int4-g64" and weights_mode("int4", 128) == "int4-g128"
    assert weights_mode("int4") == "int4"  # resolve_weights picks the group from the model's shapes
    with pytest.raises(LlamarunError, match="--group-size applies to int4"):
        weights_mode("int8", 64)


def test_bytes_per_format_for_the_8b_shape():
    exact = weight_bytes(LLAMA8B, "exact", 2)
    assert exact == LLAMA8B.num_parameters * 2
    embed = LLAMA8B.vocab_size * LLAMA8B.hidden_size * 2  # stays bf16
    for mode, per_weight in (("fp8", 1.0), ("int8", 1.0), ("int4-g128", 0.5 + 4 / 128), ("int4-g64", 0.5 + 4 / 64)):
        linears = LLAMA8B.num_parameters - LLAMA8B.vocab_size * LLAMA8B.hidden_size - 65 * 4096
        got = weight_bytes(LLAMA8B, mode, 2)
        assert got == pytest.approx(embed + linears * per_weight + 65 * 4096 * 2, rel=1e-3), mode
    assert weight_bytes(LLAMA8B, "int4-g128", 2) < 6e9 < weight_bytes(LLAMA8B, "fp8", 2) < 9.5e9 < exact


def test_head_modes_spell_resolve_and_refuse_clearly():
    from llamarun.quant.modes import head_method_for, method_for, split_head

    assert weights_mode("int4", 64, "exact") == "int4-g64+head-exact"
    assert weights_mode("fp8", None, "int8") == "fp8+head-int8"
    assert weights_mode("int8", None, "int8") == "int8"  # the decoder's own format: no suffix
    assert split_head("int4-g64+head-exact") == ("int4-g64", "exact")
    assert method_for("int4-g64+head-exact").name == "int4-g64" and head_method_for("int4-g64+head-exact") is None
    assert head_method_for("fp8+head-int8").name == "int8" and head_method_for("int4-g128").name == "int4-g128"
    assert resolve_weights("int4-g128+head-exact", device="cpu", config=LLAMA8B) == "int4-g128+head-exact"
    with pytest.raises(LlamarunError, match="--head needs online quantization"):
        weights_mode("exact", None, "int8")
    for quantizes_nothing in ("packed+head-exact", "auto+head-int8", "exact+head-int8"):  # the Python API's way in
        with pytest.raises(LlamarunError, match="a head format applies to online quantization"):
            resolve_weights(quantizes_nothing, device="cpu", config=LLAMA8B)
    assert resolve_weights("int8+head-int8", device="cpu", config=LLAMA8B) == "int8"  # the plain format's name
    with pytest.raises(LlamarunError, match="unknown --head 'bf17'"):
        weights_mode("int4", None, "bf17")
    with pytest.raises(LlamarunError, match="--head fp8 needs an NVIDIA GPU") as err:
        resolve_weights("int4-g128+head-fp8", device="cpu", config=LLAMA8B)
    assert "--head int8" in str(err.value)


def test_a_float_head_costs_its_bytes_in_the_plan():
    config = PRESETS["llama3.3-70b"]
    head = config.vocab_size * config.hidden_size
    int4 = weight_bytes(config, "int4-g128", 2)
    assert weight_bytes(config, "int4-g128+head-exact", 2) - int4 == 2 * head - Int4Method(128).packed_bytes(
        config.vocab_size, config.hidden_size, 2)
