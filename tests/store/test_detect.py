"""Format detection and `show` facts, from metadata: real writers for each format, and broken inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tiny_checkpoints import (
    TinySpec,
    make_weights,
    write_gguf,
    write_hf,
    write_hf_sharded,
    write_meta,
    write_mlx,
)

from llamarun.config import ModelConfig
from llamarun.errors import CheckpointError, ModelNotFoundError, UnsupportedError
from llamarun.loaders.detect import detect_format
from llamarun.store.describe import describe_model, format_parameters, pth_shapes

SPEC = TinySpec()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    weights, packed = make_weights(SPEC)
    return {
        "hf": write_hf(SPEC, weights, root / "hf"),
        "hf_sharded": write_hf_sharded(SPEC, weights, root / "sharded"),
        "mlx": write_mlx(SPEC, weights, packed, root / "mlx"),
        "meta": write_meta(SPEC, weights, root / "meta"),
        "gguf": write_gguf(SPEC, weights, root / "tiny.gguf"),
    }


@pytest.mark.parametrize("kind,expected", [("hf", "hf"), ("hf_sharded", "hf"), ("mlx", "mlx"),
                                           ("meta", "meta"), ("gguf", "gguf")])
def test_each_written_format_is_detected(tiny: dict[str, Path], kind: str, expected: str) -> None:
    assert detect_format(tiny[kind]) == expected


def test_meta_checkpoint_in_original_subfolder(tiny: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(tiny["meta"], tmp_path / "repo" / "original")
    assert detect_format(tmp_path / "repo") == "meta"


def test_names_do_not_decide(tiny: dict[str, Path], default_gguf: Path, tmp_path: Path) -> None:
    # A GGUF under a safetensors name is still GGUF; a ".gguf" that is not GGUF is rejected.
    disguised = tmp_path / "model.safetensors"
    disguised.symlink_to(default_gguf)
    assert detect_format(disguised) == "gguf"
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04not a gguf")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        detect_format(fake)
    # An MLX folder renamed to look like anything else is still MLX.
    renamed = tmp_path / "Llama-3.1-8B-Instruct-bf16"
    shutil.copytree(tiny["mlx"], renamed)
    assert detect_format(renamed) == "mlx"


def _config_folder(tmp: Path, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp / "model.safetensors"))
    return tmp


def test_quantization_entry_without_mlx_tensors_is_hf(tmp_path: Path) -> None:
    cfg = SPEC.hf_config() | {"quantization": {"group_size": 64, "bits": 4}}
    tensors = {"model.layers.0.mlp.up_proj.weight": np.zeros((4, 4), np.float16)}
    folder = _config_folder(tmp_path / "a", cfg, tensors)
    assert detect_format(folder) == "hf"


def test_other_quantizers_are_hf_not_mlx(tmp_path: Path) -> None:
    # compressed-tensors / fp8 checkpoints name a quant_method; their packed tensors must not read as MLX.
    cfg = SPEC.hf_config() | {"quantization_config": {"quant_method": "compressed-tensors", "bits": 4,
                                                      "group_size": 64}}
    tensors = {"l.weight": np.zeros((4, 1), np.uint32), "l.scales": np.zeros(4, np.float16),
               "l.biases": np.zeros(4, np.float16)}
    assert detect_format(_config_folder(tmp_path / "b", cfg, tensors)) == "hf"
    cfg["quantization_config"] = {"group_size": 64, "bits": 4}  # mlx-lm's newer spelling
    assert detect_format(_config_folder(tmp_path / "c", cfg, tensors)) == "mlx"


def test_missing_and_unknown_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such file"):
        detect_format(tmp_path / "nope")
    with pytest.raises(UnsupportedError, match="not a model folder"):
        detect_format(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnsupportedError, match=r"no \.safetensors"):
        detect_format(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(CheckpointError):
        detect_format(tmp_path / "empty")


def test_corrupt_config_and_header_are_checkpoint_errors(tmp_path: Path) -> None:
    mlx_cfg = SPEC.hf_config() | {"quantization": {"bits": 4, "group_size": 64}}
    folder = _config_folder(tmp_path / "m", mlx_cfg,
                            {"x": np.zeros(2, np.float32)})
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError):
        detect_format(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        detect_format(folder)


# ----- describe: what `show` prints -----

def test_describe_default_gguf_against_gguf_package(default_gguf: Path, default_gguf_reader) -> None:
    ref = default_gguf_reader  # gguf's GGUFReader over the same file (tests/conftest.py)
    info = describe_model(default_gguf)
    assert info.parameters == sum(int(t.n_elements) for t in ref.tensors)  # config count == tensor count
    assert info.quantization == "Q4_1"
    assert info.context_length == ref.fields["llama.context_length"].contents()
    assert info.embedding_length == ref.fields["llama.embedding_length"].contents()
    assert info.chat_template == ref.fields["tokenizer.chat_template"].contents()
    assert info.license == ref.fields["general.license"].contents()
    assert format_parameters(info.parameters) == "134.5M"


def test_all_formats_describe_the_same_model(tiny: dict[str, Path]) -> None:
    expected = ModelConfig.from_hf(SPEC.hf_config()).num_parameters
    infos = {k: describe_model(p) for k, p in tiny.items()}
    assert {k: i.parameters for k, i in infos.items()} == dict.fromkeys(tiny, expected)
    assert {i.embedding_length for i in infos.values()} == {SPEC.hidden_size}
    assert infos["mlx"].quantization == "MLX 4-bit, group 32"
    assert infos["hf"].quantization == "F32"
    assert infos["meta"].architecture == "llama"


def test_meta_ffn_width_comes_from_the_shards(tiny: dict[str, Path]) -> None:
    shapes = pth_shapes(tiny["meta"] / "consolidated.00.pth")
    w1_shape, dtype = shapes["layers.0.feed_forward.w1.weight"]
    assert w1_shape == (SPEC.intermediate_size // 2, SPEC.hidden_size)  # rows split over 2 shards
    assert dtype == "F32"


def test_meta_params_of_llama_3_3_70b_without_shards_use_meta_sizing(tmp_path: Path) -> None:
    params = {"dim": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "vocab_size": 128256,
              "ffn_dim_multiplier": 1.3, "multiple_of": 4096, "norm_eps": 1e-5, "rope_theta": 500000.0,
              "use_scaled_rope": True}
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "consolidated.00.pth").write_bytes(b"")  # unreadable shard: fall back to the rule
    info = describe_model(tmp_path)
    assert info.config is not None and info.config.intermediate_size == 28672
    assert format_parameters(info.parameters) == "70.6B"  # 70.55 B, as published
    assert info.context_length == 131072


def test_hf_folder_template_and_license(tiny: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(tiny["hf"], folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (folder / "LICENSE").write_text("LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\n...")
    info = describe_model(folder)
    assert info.chat_template == "{{ messages }}"
    assert info.license is not None and info.license.startswith("LLAMA 3.1 COMMUNITY")
