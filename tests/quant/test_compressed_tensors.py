"""`llamarun quantize` writes compressed-tensors checkpoints: checked with the real `compressed-tensors` package."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.cli.main import main
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.quant.compressed_tensors import from_compressed_tensors, quantization_config, to_compressed_tensors
from llamarun.quant.layouts import dequantize
from llamarun.quant.modes import pack_hook
from llamarun.quant.rtn import int4_zero_points, quantize_fp8, quantize_int4, quantize_int8
from llamarun.quant.save import save_quantized

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.naive_quantized.base import NaiveQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402

SPEC = TinySpec(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)


def _bf16_slack(layout, ref: torch.Tensor) -> torch.Tensor:
    """Half a bf16 step of the weight and of its group's minimum (a wrong layout is off by whole steps)."""
    mins = layout.mins.float().repeat_interleave(layout.group_size, dim=1).abs() if hasattr(layout, "mins") else 0
    return (ref.abs() + mins) * 2**-8 + 1e-6


def _scheme(fmt: str, group: int | None = None):
    return QuantizationConfig.model_validate(quantization_config(fmt, group)).config_groups["group_0"]


def _library_weight(fmt: str, tensors: dict, group: int | None = None) -> torch.Tensor:
    compressor = PackedQuantizationCompressor if fmt == "int4" else NaiveQuantizationCompressor
    return compressor.decompress(dict(tensors), _scheme(fmt, group))["weight"]


@pytest.mark.parametrize("n", [48, 44])  # 44: zero points fill a partial int32 word down the rows
def test_int4_tensors_are_the_packages_own_layout(n):
    torch.manual_seed(0)
    layout = quantize_int4(torch.randn(n, 256, dtype=torch.bfloat16), 64)
    tensors = to_compressed_tensors(layout)
    assert tensors["weight_packed"].dtype == torch.int32 and tensors["weight_packed"].shape == (n, 32)
    assert tensors["weight_zero_point"].shape == (-(-n // 8), 4)
    # Our words are the package's packing of the signed values (stored + 8).
    from llamarun.quant.layouts import unpack_nibbles

    signed = (unpack_nibbles(layout.qweight).to(torch.int16) - 8).to(torch.int8)
    assert torch.equal(tensors["weight_packed"], pack_to_int32(signed, 4))
    zero = (int4_zero_points(layout).to(torch.int16) - 8).to(torch.int8)
    assert torch.equal(tensors["weight_zero_point"], pack_to_int32(zero, 4, packed_dim=0))
    # The package's dequantization ((q - zero) * scale, in bf16) agrees with ours (q * scale + min, the
    # minimum rounded to bf16 once) to bf16 rounding of the weight and of the minimum.
    got = _library_weight("int4", tensors, 64).float()
    ref = dequantize(layout)
    assert ((got - ref).abs() <= _bf16_slack(layout, ref)).all()
    back = from_compressed_tensors(tensors, "int4", 64)
    assert torch.equal(back.qweight, layout.qweight) and torch.equal(back.scales, layout.scales)
    assert torch.equal(back.mins, layout.mins)


@pytest.mark.parametrize("fmt, quantize", [("fp8", quantize_fp8), ("int8", quantize_int8)])
def test_fp8_and_int8_tensors_decompress_exactly(fmt, quantize):
    torch.manual_seed(0)
    layout = quantize(torch.randn(40, 96))
    tensors = to_compressed_tensors(layout)
    assert tensors["weight_scale"].shape == (40, 1)
    assert torch.equal(_library_weight(fmt, tensors).float(), dequantize(layout))
    assert torch.equal(dequantize(from_compressed_tensors(tensors, fmt)), dequantize(layout))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    weights, _ = make_weights(SPEC, seed=5)
    folder = write_hf(SPEC, weights, tmp_path_factory.mktemp("src") / "hf")
    add_byte_tokenizer(folder)
    return folder


def _read(folder):
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            tensors.update({k: h.get_tensor(k) for k in h.keys()})  # noqa: SIM118 - safe_open is no dict
    return tensors


@pytest.mark.parametrize("fmt, group", [("int4", 128), ("int4", 64), ("fp8", None), ("int8", None)])
def test_saved_checkpoint_decompresses_and_equals_online_quantization(tiny_hf, tmp_path, fmt, group):
    out = tmp_path / "q"
    save_quantized(open_checkpoint(tiny_hf, "hf"), out, fmt, group_size=group, shard_bytes=100_000)
    config = json.loads((out / "config.json").read_text())
    scheme = QuantizationConfig.model_validate(config["quantization_config"])  # the package accepts it
    assert config["quantization_config"]["format"] == {"int4": "pack-quantized", "fp8": "float-quantized",
                                                       "int8": "int-quantized"}[fmt]
    assert scheme.config_groups["group_0"].weights.group_size == group
    assert (out / "tokenizer.json").exists() and (out / "model.safetensors.index.json").exists()
    tensors = _read(out)
    assert tensors["lm_head.weight"].dtype == torch.bfloat16
    assert tensors["model.embed_tokens.weight"].dtype == torch.bfloat16
    # "Loading our own output" through the layout reader: the online-quantized model (same bf16 weights)
    # holds exactly the layouts the file holds, merged linears being their shards stacked by rows.
    mode = f"int4-g{group}" if fmt == "int4" else fmt
    online = build_model(open_checkpoint(tiny_hf, "hf"), dtype=torch.bfloat16, pack=pack_hook(mode))
    layer = online.model.layers[1]
    stem = "model.layers.1"
    for module, shards in ((layer.self_attn.qkv_proj, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                           (layer.mlp.gate_up_proj, ("mlp.gate_proj", "mlp.up_proj")),
                           (layer.mlp.down_proj, ("mlp.down_proj",))):
        pieces = []
        for shard in shards:
            own = {k.rpartition(".")[2]: v for k, v in tensors.items() if k.startswith(f"{stem}.{shard}.")}
            assert "weight_packed" in own if fmt == "int4" else own["weight"].dtype != torch.bfloat16
            library = _library_weight(fmt, own, group).float()
            layout = from_compressed_tensors(own, fmt, group)
            mine = dequantize(layout)
            assert ((library - mine).abs() <= _bf16_slack(layout, mine)).all()
            pieces.append(mine)
        assert torch.equal(torch.cat(pieces), dequantize(module.layout()))


def test_quantize_command_writes_a_folder_and_refuses_bad_input(tiny_hf, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["quantize", str(tiny_hf), "--format", "int4", "--group-size", "64", str(out),
                 "--device", "cpu"]) == 0
    assert "as int4-g64 (compressed-tensors)" in capsys.readouterr().out
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    for argv, message in (
        (["quantize", str(tiny_hf), "--format", "int8", str(out)], "exists and is not an empty folder"),
        (["quantize", str(tiny_hf), "--format", "fp8", "--group-size", "64", str(tmp_path / "x")],
         "--group-size applies to int4"),
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_quantize_takes_the_group_that_fits_and_refuses_one_asked_for_that_does_not(tmp_path, capsys):
    spec = TinySpec()  # hidden 64: groups of 128 do not fit
    weights, _ = make_weights(spec)
    src = write_hf(spec, weights, tmp_path / "hf")
    argv = ["quantize", str(src), "--format", "int4", "--device", "cpu"]
    assert main([*argv, "--group-size", "128", str(tmp_path / "q128")]) == 1
    assert "use --group-size 64" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "q")]) == 0  # no group asked: the largest that fits
    assert "as int4-g64 (compressed-tensors)" in capsys.readouterr().out
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    groups = {g["weights"]["group_size"] for g in config["quantization_config"]["config_groups"].values()}
    assert groups == {64}


def test_quantize_gptq_writes_the_same_format_closer_to_the_original_on_text(tiny_hf, tmp_path, capsys):
    """`--gptq`: the same compressed-tensors int4 files, whose logits on held-out text are nearer the exact model's."""
    from llamarun.eval.forward import window_logits
    from llamarun.eval.text import DEFAULT_TEXT, read_text, text_tokens

    paths = {"rtn": tmp_path / "rtn", "gptq": tmp_path / "gptq"}
    assert main(["quantize", str(tiny_hf), "--format", "int4", "--group-size", "64", str(paths["rtn"]),
                 "--device", "cpu"]) == 0
    assert main(["quantize", str(tiny_hf), "--format", "int4", "--group-size", "64", "--gptq", str(paths["gptq"]),
                 "--device", "cpu"]) == 0
    assert "as int4-g64 with GPTQ (compressed-tensors)" in capsys.readouterr().out
    config = json.loads((paths["gptq"] / "config.json").read_text())
    QuantizationConfig.model_validate(config["quantization_config"])
    exact = build_model(open_checkpoint(tiny_hf, "hf"))
    ckpt = open_checkpoint(tiny_hf, "hf")
    every = text_tokens(ckpt.tokenizer(), read_text(DEFAULT_TEXT))
    held_out = torch.tensor(every[4096:4096 + 256])  # past the 2048 tokens GPTQ calibrated on
    want = window_logits(exact, held_out, torch.float32, "cpu").log_softmax(-1)
    kl = {}
    for name, path in paths.items():
        got = window_logits(build_model(open_checkpoint(path, "hf")), held_out, torch.float32, "cpu").log_softmax(-1)
        kl[name] = (want.exp() * (want - got)).sum(-1).mean().item()
    assert 0 < kl["gptq"] < kl["rtn"], kl
    gptq_tensors, rtn_tensors = _read(paths["gptq"]), _read(paths["rtn"])
    assert not torch.equal(gptq_tensors["model.layers.0.self_attn.q_proj.weight_packed"],
                           rtn_tensors["model.layers.0.self_attn.q_proj.weight_packed"])
    for argv, message in (
        (["quantize", str(tiny_hf), "--format", "fp8", "--gptq", str(tmp_path / "x")], "--gptq rounds int4"),
        (["quantize", str(tiny_hf), "--format", "int4", "--group-size", "64", "--calibration", "t.txt",
          str(tmp_path / "y")], "--calibration is for --gptq"),
    ):
        assert main(argv) == 1
        assert message in capsys.readouterr().err


def test_quantize_smooth_writes_smoothed_norms_and_weights_that_keep_the_model(tiny_hf, tmp_path, capsys):
    """`--smooth`: the checkpoint carries SmoothQuant's norms (the activations' division) and the weights that took
    their factors, so the loaded model still computes the original function, up to int8's rounding."""
    from llamarun.eval.forward import window_logits
    from llamarun.eval.text import DEFAULT_TEXT, read_text, text_tokens

    out = tmp_path / "smooth"
    assert main(["quantize", str(tiny_hf), "--format", "int8", "--smooth", str(out), "--device", "cpu"]) == 0
    assert "as int8 after SmoothQuant (compressed-tensors)" in capsys.readouterr().out
    written, source = _read(out), _read(tiny_hf)
    norm = "model.layers.0.input_layernorm.weight"
    assert not torch.equal(written[norm].float(), source[norm].float())  # the smoothing factors went in
    every = text_tokens(open_checkpoint(tiny_hf, "hf").tokenizer(), read_text(DEFAULT_TEXT))
    held_out = torch.tensor(every[4096:4096 + 256])  # past the 2048 calibration tokens
    want = window_logits(build_model(open_checkpoint(tiny_hf, "hf")), held_out, torch.float32, "cpu").log_softmax(-1)
    got = window_logits(build_model(open_checkpoint(out, "hf")), held_out, torch.float32, "cpu").log_softmax(-1)
    assert (want.exp() * (want - got)).sum(-1).mean().item() < 0.02
    assert main(["quantize", str(tiny_hf), "--format", "int4", "--group-size", "64", "--smooth",
                 str(tmp_path / "x")]) == 1
    assert "--smooth prepares the activations of fp8 and int8" in capsys.readouterr().err


def test_quantize_refuses_a_gguf_before_calibrating(tmp_path, capsys, monkeypatch):
    """A source `quantize` cannot write from is refused first, not after GPTQ or SmoothQuant have run."""
    from tiny_checkpoints import write_gguf

    from llamarun.quant import gptq_checkpoint

    spec = TinySpec()
    weights, _ = make_weights(spec)
    gguf = write_gguf(spec, weights, tmp_path / "tiny.gguf")
    calibrated = []
    monkeypatch.setattr(gptq_checkpoint, "smoothed_checkpoint_tensors", lambda *a, **k: calibrated.append(1))
    assert main(["quantize", str(gguf), "--format", "int8", "--smooth", str(tmp_path / "out"), "--device", "cpu"]) == 1
    assert "reads Hugging Face safetensors checkpoints, not gguf" in capsys.readouterr().err
    assert calibrated == []
