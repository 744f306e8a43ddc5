"""`llamarun eval` as a user runs it: the table and JSON, the shipped default text, and clear errors."""

from __future__ import annotations

import json

import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.cli.main import main
from llamarun.eval.formats import available_formats


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    spec = TinySpec(max_position_embeddings=256)
    weights, _ = make_weights(spec, seed=9)
    return str(add_byte_tokenizer(write_hf(spec, weights, tmp_path_factory.mktemp("evalcli") / "hf")))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


def test_table_and_json_on_the_default_text(tiny, tmp_path, home, capsys) -> None:
    out = tmp_path / "eval.json"
    code = main(["eval", tiny, "--formats", "exact,int8", "--ctx", "32", "--stride", "16", "--max-tokens", "100",
                 "--device", "cpu", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert "alice-in-wonderland.txt: 100 tokens, windows of 32 every 16" in lines[0]
    rows = [line for line in lines if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["format", "exact", "int8"]
    assert len({len(line) for line in lines[2:]}) == 1  # aligned columns
    record = json.loads(out.read_text())
    assert record["reference"] == "exact" and record["text_tokens"] == 100 and record["stride"] == 16
    ref, int8 = record["formats"]
    assert ref["tokens"] == int8["tokens"] == 99
    assert ref["mean_kl"] == 0.0 and ref["top1_agreement"] == 1.0
    assert int8["mean_kl"] > 0 and int8["linear_weight_bytes"] < ref["linear_weight_bytes"] / 3
    assert f"{int8['perplexity']:.4f}" in rows[2]
    assert list((home / "tmp").iterdir()) == []  # the reference file is cleaned up


def error_of(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    return err


def test_missing_text_file(tiny, tmp_path, capsys) -> None:
    err = error_of(["eval", tiny, "--text", str(tmp_path / "nope.txt")], capsys)
    assert "nope.txt' does not exist" in err


def test_unknown_format_lists_the_formats(tiny, capsys) -> None:
    err = error_of(["eval", tiny, "--formats", "exact,int3"], capsys)
    assert "unknown format 'int3'" in err and ", ".join(available_formats()) in err


def test_text_shorter_than_one_window(tiny, tmp_path, capsys) -> None:
    text = tmp_path / "short.txt"
    text.write_text("too short for a window")
    err = error_of(["eval", tiny, "--text", str(text), "--ctx", "64"], capsys)
    assert "shorter than one window of 64 tokens" in err


def test_window_longer_than_the_model_positions(tiny, capsys) -> None:
    err = error_of(["eval", tiny, "--ctx", "512"], capsys)
    assert "longer than the model's 256 positions" in err


def test_json_path_in_a_missing_folder_fails_before_any_work(tiny, tmp_path, capsys) -> None:
    err = error_of(["eval", tiny, "--json", str(tmp_path / "no" / "out.json")], capsys)
    assert "cannot write" in err and "no folder" in err


def test_gptq_rows_calibrate_after_the_evaluated_text_and_beat_round_to_nearest(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    code = main(["eval", tiny, "--formats", "exact,int4-g64,int4-gptq-g64", "--ctx", "64", "--max-tokens", "256",
                 "--device", "cpu", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    _, rtn, gptq = json.loads(out.read_text())["formats"]
    assert gptq["weights"] == "int4-g64 gptq" and gptq["linear_weight_bytes"] == rtn["linear_weight_bytes"]
    assert 0 < gptq["mean_kl"] < rtn["mean_kl"]


def test_gptq_without_text_left_to_calibrate_on_says_what_to_do(tiny, tmp_path, capsys) -> None:
    short = tmp_path / "short.txt"
    short.write_text("a few words " * 40)  # about 480 byte tokens, all of them evaluated
    err = error_of(["eval", tiny, "--text", str(short), "--formats", "exact,int4-gptq-g64", "--ctx", "32",
                    "--device", "cpu"], capsys)
    assert "GPTQ needs at least 256 calibration tokens" in err and "--max-tokens" in err


def test_smoothquant_rows_calibrate_then_pack_as_their_plain_format(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    code = main(["eval", tiny, "--formats", "exact,int8,int8-smooth", "--ctx", "64", "--max-tokens", "256",
                 "--device", "cpu", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    _, plain, smooth = json.loads(out.read_text())["formats"]
    assert smooth["weights"] == "int8 smoothquant" and smooth["linear_weight_bytes"] == plain["linear_weight_bytes"]
    assert 0 < smooth["mean_kl"] < 0.1


def test_smoothquant_into_a_format_the_device_cannot_run_names_it(tiny, capsys) -> None:
    err = error_of(["eval", tiny, "--formats", "exact,fp8-smooth", "--ctx", "64", "--max-tokens", "256",
                    "--device", "cpu"], capsys)
    assert "fp8" in err.lower() and "cpu" in err.lower()


def test_a_format_can_hold_its_head_apart_and_the_table_shows_what_that_buys(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "eval.json"
    code = main(["eval", tiny, "--formats", "exact,int4-g64,int4-g64+head-exact,int4-gptq-g64+head-int8", "--ctx",
                 "64", "--max-tokens", "256", "--device", "cpu", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    _, packed, float_head, gptq = json.loads(out.read_text())["formats"]
    assert float_head["weights"] == "int4-g64+head-exact" and gptq["weights"] == "int4-g64 gptq, head int8"
    # The float head holds more bytes (the tiny model's head is not tied) and loses less.
    assert float_head["linear_weight_bytes"] > packed["linear_weight_bytes"]
    assert 0 < float_head["mean_kl"] < packed["mean_kl"]
    assert 0 < gptq["mean_kl"] < packed["mean_kl"]


@pytest.mark.parametrize(("fmt", "message"), [
    ("exact+head-int8", "format 'exact' quantizes nothing"),
    ("int8+head-bf16", "unknown head 'bf16' in format 'int8+head-bf16'"),
    ("int8+head-fp8", "--head fp8 needs an NVIDIA GPU"),
])
def test_bad_heads_are_clear_errors(tiny, fmt, message, capsys) -> None:
    err = error_of(["eval", tiny, "--formats", f"exact,{fmt}", "--ctx", "64", "--max-tokens", "256",
                    "--device", "cpu"], capsys)
    assert message in err
