"""`llamarun show`'s Weights section: each layer group's stored format and bytes, from headers only."""

from __future__ import annotations

from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.cli.main import main
from llamarun.loaders.registry import open_checkpoint
from llamarun.quant.save import save_quantized
from llamarun.store.layer_formats import group_of, stored_layer_groups


def test_names_of_every_format_fall_in_their_group():
    assert group_of("model.layers.3.self_attn.k_proj.weight") == "attention"
    assert group_of("model.layers.3.self_attn.k_proj.weight_packed") == "attention"
    assert group_of("blk.3.attn_output.weight") == "attention"
    assert group_of("model.layers.0.mlp.down_proj.scales") == "mlp" and group_of("blk.0.ffn_up.weight") == "mlp"
    assert group_of("lm_head.weight") == "head" and group_of("output.weight") == "head"
    assert group_of("token_embd.weight") == "embedding" and group_of("model.embed_tokens.weight") == "embedding"
    assert group_of("output_norm.weight") == "norms" and group_of("model.layers.1.input_layernorm.weight") == "norms"


def test_float_checkpoint_groups_add_up_to_the_parameters(tmp_path):
    spec = TinySpec()
    weights, _ = make_weights(spec)
    path = write_hf(spec, weights, tmp_path / "hf")
    groups = {g.group: g for g in stored_layer_groups(path, "hf")}
    config = open_checkpoint(path, "hf").config
    element = next(iter(weights.values())).element_size()
    assert sum(g.bytes for g in groups.values()) == config.num_parameters * element
    h, i, layers = spec.hidden_size, spec.intermediate_size, spec.num_layers
    assert groups["mlp"].bytes == 3 * h * i * layers * element
    assert groups["embedding"].decode_bytes == h * element  # one row per token
    assert groups["head"].decode_bytes == groups["head"].bytes == spec.vocab_size * h * element


def test_compressed_tensors_checkpoint_names_its_format(tmp_path, capsys):
    spec = TinySpec()
    weights, _ = make_weights(spec)
    src = write_hf(spec, weights, tmp_path / "hf")
    out = tmp_path / "q"
    save_quantized(open_checkpoint(src, "hf"), out, "int4", group_size=64)
    groups = {g.group: g for g in stored_layer_groups(out, "hf")}
    assert groups["attention"].format == groups["mlp"].format == "int4-g64 (compressed-tensors)"
    assert groups["head"].format == "BF16"
    float_mlp = 3 * spec.hidden_size * spec.intermediate_size * spec.num_layers * 2  # bf16 bytes
    assert groups["mlp"].bytes < float_mlp / 3  # 4-bit weights plus their scales and zero points
    assert main(["show", str(src)]) == 0
    shown = capsys.readouterr().out
    assert "  Weights" in shown and "per decode step" in shown


def test_default_model_shows_its_gguf_types(default_gguf, capsys):
    groups = {g.group: g for g in stored_layer_groups(default_gguf, "gguf")}
    assert groups["attention"].format == "Q4_1" and groups["mlp"].format == "Q4_1"
    assert groups["head"].format.startswith("tied to the embedding")
    assert groups["head"].decode_bytes == groups["embedding"].bytes
    assert sum(g.decode_bytes for g in groups.values()) < default_gguf.stat().st_size
