"""`--weights` / `--quantize` / `--group-size`: one setting, parsed the same by every command, clear errors."""

from __future__ import annotations

import json

import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.bench.random_weights import load_random_model
from llamarun.cli.main import build_parser, main
from llamarun.cli.weights_flags import weights_from_args
from llamarun.quant.footprint import decode_bytes, model_footprint
from llamarun.quant.method import PackedLinear


@pytest.mark.parametrize("command", [["run", "m", "hi"], ["serve"], ["bench", "m"], ["embed", "m", "t"]])
@pytest.mark.parametrize("flags, mode", [
    ([], "auto"), (["--weights", "exact"], "exact"), (["--quantize", "fp8"], "fp8"), (["--weights", "int8"], "int8"),
    (["--quantize", "int4"], "int4"), (["--quantize", "int4", "--group-size", "64"], "int4-g64"),
    (["--weights", "int4", "--group-size", "128"], "int4-g128"),
])
def test_every_command_reads_the_same_setting(command, flags, mode):
    args = build_parser().parse_args([*command, *flags])
    assert weights_from_args(args) == mode


def test_weights_and_quantize_together_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["run", "m", "--weights", "exact", "--quantize", "int8"])
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_bad_group_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "m", "--quantize", "int4", "--group-size", "100"])
    assert "--group-size" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    spec = TinySpec()
    weights, _ = make_weights(spec)
    folder = write_hf(spec, weights, tmp_path_factory.mktemp("m") / "hf")
    add_byte_tokenizer(folder)
    return folder


@pytest.mark.parametrize("flags, message", [
    (["--quantize", "fp8"], "fp8 needs an NVIDIA GPU with FP8 tensor cores"),
    (["--quantize", "int4", "--group-size", "128"], "int4 group size 128 does not divide the input size 64"),
    (["--quantize", "int8", "--group-size", "64"], "--group-size applies to int4"),
])
def test_run_refuses_what_cannot_run_in_one_line(tiny_model, flags, message, capsys):
    assert main(["run", str(tiny_model), "--device", "cpu", *flags, "hello"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err


@pytest.mark.timeout(300)
@pytest.mark.parametrize("group", [["--group-size", "64"], []])  # without: 128 does not divide 64, so 64
def test_run_quantized_int4_answers_and_verbose_names_the_formats(tiny_model, group, capsys):
    code = main(["run", str(tiny_model), "--device", "cpu", "--quantize", "int4", *group,
                 "--verbose", "--num-predict", "4", "--temperature", "0", "--raw", "hello"])
    assert code == 0
    err = capsys.readouterr().err
    rows = dict(line.split(":", 1) for line in err.splitlines() if ":" in line)
    assert rows["weights"].strip() == "attention int4-g64, mlp int4-g64, head int4-g64, embedding float32"
    assert rows["weight reads"].strip().endswith("per decode step (0.1 MB held)")


def test_random_weights_quantized_int8_benches(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "--random-weights", "tiny", "--device", "cpu", "--quantize", "int8", "--requests", "1",
                 "--prompt-tokens", "8", "--output-tokens", "3", "--copy-bandwidth", "50", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["random_weights"]["format"] == "int8" and record["settings"]["quantization"] == "int8"
    assert "weights: attention int8, mlp int8, head int8, embedding float32" in capsys.readouterr().out


def test_random_weights_pack_every_linear_and_match_the_plan():
    rm = load_random_model("tiny", device="cpu", concurrency=1, context_length=32, weights="int8")
    model = rm.engine.runner.model
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 4 * rm.config.num_layers + 1
    groups = model_footprint(model)
    assert sum(g.bytes for g in groups) == rm.weight_bytes
    assert decode_bytes(groups) < rm.config.num_parameters  # int8 linears: under a byte per parameter


def test_load_phase_row_names_each_phase_and_the_graph_capture():
    from llamarun.cli.verbose import load_phase_row

    name, value = load_phase_row({"checks": 0.05, "weights": 4.2, "engine": 3.1, "graphs": 2.9})
    assert name == "load phases"
    assert value == "checks 50ms, weights 4.2s, engine 3.1s (CUDA graphs 2.9s)"
    assert load_phase_row({"checks": 0.5, "weights": 1.0, "engine": 0.2})[1] == "checks 500ms, weights 1s, engine 200ms"
