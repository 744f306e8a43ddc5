"""Checkpoints keep quantized linears packed: `packed_tensors` matches `tensors` weight for weight,
formats are found from metadata, and what was packed or re-quantized is reported."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from int4_writers import awq_tensors, gptq_tensors, random_int4, reference_weight
from tiny_checkpoints import TinySpec, gguf_name, make_weights, write_gguf, write_mlx

from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.forward import forward_tokens
from llamarun.errors import ConfigMismatchError, LlamarunError, UnsupportedError
from llamarun.loaders.checkpoint import is_linear_weight
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.quant.layouts import Int4Weight, Int8Weight, dequantize
from llamarun.quant.method import PackedLinear
from llamarun.quant.modes import choose_weights

SPEC = TinySpec()


def stream_both(ckpt) -> tuple[dict, dict]:
    floats = dict(ckpt.tensors(torch.float32))
    packed = dict(ckpt.packed_tensors(torch.float32))
    assert list(floats) == list(packed)
    return floats, packed


def write_quantized_gguf(path: Path) -> dict[str, str]:
    """The tiny model as GGUF with Q4_0, Q4_1 and Q8_0 linears; returns HF name -> type."""
    import gguf

    weights, _ = make_weights(SPEC)
    kinds = {}
    original = gguf.GGUFWriter.add_tensor
    cycle = [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0]

    def add_tensor(self, name, tensor, *args, **kw):
        hf = next((n for n in weights if gguf_name(n) == name), None)
        if hf is None or not is_linear_weight(hf):
            return original(self, name, tensor, *args, **kw)
        qtype = cycle[len(kinds) % 3]
        kinds[hf] = qtype.name
        packed = gguf.quants.quantize(np.ascontiguousarray(tensor, dtype=np.float32), qtype)
        return original(self, name, packed, raw_shape=packed.shape, raw_dtype=qtype)

    gguf.GGUFWriter.add_tensor = add_tensor
    try:
        write_gguf(SPEC, weights, path)
    finally:
        gguf.GGUFWriter.add_tensor = original
    return kinds


def test_gguf_linears_kept_packed_with_q_k_rows_in_hf_order(tmp_path: Path):
    kinds = write_quantized_gguf(tmp_path / "m.gguf")
    ckpt = open_checkpoint(tmp_path / "m.gguf")
    assert "Q4_0 -> int4 g32" in ckpt.packing_plan and "re-quantized" in ckpt.packing_plan
    floats, packed = stream_both(ckpt)
    for name, kind in kinds.items():
        w = packed[name]
        if kind == "Q8_0":
            assert isinstance(w, Int8Weight)
            assert float((dequantize(w) - floats[name]).norm() / floats[name].norm()) < 0.01
        else:
            assert isinstance(w, Int4Weight) and torch.equal(dequantize(w), floats[name]), name
    assert all(isinstance(packed[n], torch.Tensor) for n in packed if n not in kinds)
    counts = {k: list(kinds.values()).count(k) for k in ("Q4_0", "Q4_1", "Q8_0")}
    note = ckpt.packing_note()
    assert note.startswith(f"kept packed: {counts['Q4_0']} Q4_0 -> int4 g32, {counts['Q4_1']} Q4_1 -> int4 g32 "
                           f"(exact); re-quantized: {counts['Q8_0']} Q8_0 -> int8 per channel (relative RMS error")


def test_mlx_linears_kept_packed(tmp_path: Path):
    weights, packed_mlx = make_weights(SPEC)
    ckpt = open_checkpoint(write_mlx(SPEC, weights, packed_mlx, tmp_path / "mlx"))
    floats, packed = stream_both(ckpt)
    linears = [n for n in packed if is_linear_weight(n)]
    assert linears and all(isinstance(packed[n], Int4Weight) for n in linears)
    assert all(torch.equal(dequantize(packed[n]), floats[n]) for n in linears)
    assert ckpt.packing_note() == f"kept packed: {len(linears)} MLX 4-bit g32 -> int4 g32 (exact)"


def write_int4_folder(folder: Path, quant: dict, per_linear) -> dict[str, torch.Tensor]:
    """An HF folder whose linears are stored by `per_linear(name, n, k) -> (tensors, reference)`."""
    from safetensors.torch import save_file

    weights, _ = make_weights(SPEC)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SPEC.hf_config() | {"quantization_config": quant}))
    tensors, reference = {}, {}
    for name, w in weights.items():
        if is_linear_weight(name) and name != "lm_head.weight":
            module = name.removesuffix(".weight")
            side, reference[name] = per_linear(name, *w.shape)
            tensors.update({f"{module}.{k}": v for k, v in side.items()})
        else:
            tensors[name] = reference[name] = w
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return reference


def test_awq_folder_packed_and_expanded_agree_with_the_formula(tmp_path: Path):
    def awq(name, n, k):
        q, z, s = random_int4(n, k, 32, seed=zlib.crc32(name.encode()) % 1000)
        return awq_tensors(q, z, s), reference_weight(q, z, s, torch.arange(k) // 32)

    reference = write_int4_folder(tmp_path / "awq", {"quant_method": "awq", "bits": 4, "group_size": 32,
                                                     "zero_point": True, "version": "gemm"}, awq)
    ckpt = open_checkpoint(tmp_path / "awq")
    floats, packed = stream_both(ckpt)
    assert set(floats) == set(reference)
    for name, ref in reference.items():
        assert torch.equal(floats[name], ref)
        w = packed[name]
        assert torch.equal(dequantize(w) if not isinstance(w, torch.Tensor) else w, ref)
    assert ckpt.packing_note().startswith(f"kept packed: {7 * SPEC.num_layers} AWQ int4 g32 -> int4 g32")
    build_model(ckpt)  # every name has its place in the model


def test_gptq_act_order_linears_are_expanded_and_reported(tmp_path: Path):
    def gptq(name, n, k):
        q, z, s = random_int4(n, k, 32, seed=1)
        z = z.clamp(min=1)
        scattered = "down_proj" in name
        g = torch.randperm(k, generator=torch.Generator().manual_seed(2)) // 32 if scattered else torch.arange(k) // 32
        return gptq_tensors(q, z, s, g), reference_weight(q, z, s, g)

    quant = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False}
    reference = write_int4_folder(tmp_path / "gptq", quant, gptq)
    ckpt = open_checkpoint(tmp_path / "gptq")
    floats, packed = stream_both(ckpt)
    for name, ref in reference.items():
        assert torch.equal(floats[name], ref)
        w = packed[name]
        if "down_proj" in name:
            assert isinstance(w, torch.Tensor) and torch.equal(w, ref)
        elif is_linear_weight(name) and name != "lm_head.weight":
            assert isinstance(w, Int4Weight) and torch.equal(dequantize(w), ref)
    assert f"expanded to float: {SPEC.num_layers} GPTQ act-order" in ckpt.packing_note()


def test_compressed_tensors_folder_written_by_the_library(tmp_path: Path):
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=32)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    config = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                                quantization_status="compressed", ignore=["lm_head"]).model_dump(mode="json")
    comp = BaseCompressor.load_from_registry("pack-quantized")

    def pack(name, n, k):
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)).to(torch.bfloat16) * 0.05
        view = w.float().view(n, -1, 32)
        scale, zp = calculate_qparams(view.amin(-1), view.amax(-1), args)
        sd = comp.compress({"weight": w, "weight_scale": scale.to(torch.bfloat16), "weight_zero_point": zp}, scheme)
        return sd, comp.decompress(dict(sd), scheme)["weight"].float()

    reference = write_int4_folder(tmp_path / "ct", config, pack)
    ckpt = open_checkpoint(tmp_path / "ct")
    assert ckpt.quantization.startswith("compressed-tensors pack-quantized int4 g32")
    _, packed = stream_both(ckpt)
    linears = [n for n in packed if is_linear_weight(n) and n != "lm_head.weight"]
    assert linears and all(isinstance(packed[n], Int4Weight) for n in linears)
    for name in linears:
        assert torch.equal(dequantize(packed[name], torch.bfloat16).float(), reference[name]), name


def test_unknown_method_and_wrong_group_size_are_clear_errors(tmp_path: Path):
    def awq(name, n, k):
        q, z, s = random_int4(n, k, 32)
        return awq_tensors(q, z, s), reference_weight(q, z, s, torch.arange(k) // 32)

    write_int4_folder(tmp_path / "bnb", {"quant_method": "bitsandbytes", "load_in_4bit": True}, awq)
    with pytest.raises(UnsupportedError, match="supported quant_method values: awq, gptq, compressed-tensors"):
        open_checkpoint(tmp_path / "bnb")
    write_int4_folder(tmp_path / "g64", {"quant_method": "awq", "bits": 4, "group_size": 64}, awq)
    with pytest.raises(ConfigMismatchError, match="group_size"):
        dict(open_checkpoint(tmp_path / "g64").packed_tensors(torch.float32))


# `--weights packed`: pre-quantized checkpoints become packed linears without expanding.


def _logits(model: torch.nn.Module) -> torch.Tensor:
    cache = ContiguousKVCache(model.config, 16, torch.float32, "cpu")
    return forward_tokens(model, cache, [1, 5, 9, 42, 7, 3], all_logits=True)  # [tokens, vocab]


def _awq_folder(tmp_path: Path) -> Path:
    def awq(name, n, k):
        q, z, s = random_int4(n, k, 32, seed=zlib.crc32(name.encode()) % 1000)
        return awq_tensors(q, z, s), reference_weight(q, z, s, torch.arange(k) // 32)

    write_int4_folder(tmp_path / "awq", {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
                                         "version": "gemm"}, awq)
    return tmp_path / "awq"


def test_awq_linears_stay_packed_and_agree_with_the_expanded_model(tmp_path: Path):
    ckpt = open_checkpoint(_awq_folder(tmp_path))
    packed = build_model(ckpt, keep_packed=True)
    expanded = build_model(open_checkpoint(tmp_path / "awq"))
    layer = packed.model.layers[0]
    for module in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
        assert isinstance(module, PackedLinear) and module.format == "int4-g32"
    # the CPU int4 kernel multiplies in bfloat16 (its fast path): close, not bit-equal
    a, b = _logits(packed), _logits(expanded)
    assert ((a - b).norm() / b.norm()).item() < 1e-2


def test_gguf_with_mixed_packings_expands_only_the_mixed_merged_linears(tmp_path: Path):
    kinds = write_quantized_gguf(tmp_path / "m.gguf")  # q/k/v cycle through Q4_0, Q4_1, Q8_0
    packed = build_model(open_checkpoint(tmp_path / "m.gguf"), keep_packed=True)
    expanded = build_model(open_checkpoint(tmp_path / "m.gguf"))
    layer = packed.model.layers[0]
    assert not isinstance(layer.self_attn.qkv_proj, PackedLinear)  # Q4_0 + Q4_1 + Q8_0 parts: expanded
    assert isinstance(layer.self_attn.o_proj, PackedLinear)
    assert any(k == "Q8_0" for k in kinds.values())
    # Q8_0 is re-quantized to int8 per channel (about 1% error), the 4-bit ones are exact
    torch.testing.assert_close(_logits(packed), _logits(expanded), atol=0.05, rtol=0.05)


def test_packed_mode_refuses_float_checkpoints(tmp_path: Path):
    from tiny_checkpoints import make_weights, write_hf

    weights, _ = make_weights(SPEC)
    ckpt = open_checkpoint(write_hf(SPEC, weights, tmp_path / "hf"))
    with pytest.raises(LlamarunError, match="not quantized"):
        choose_weights("packed", ckpt, "cpu")
    assert choose_weights("packed", open_checkpoint(_awq_folder(tmp_path)), "cpu") == "packed"


# `--weights packed` on a GPU: the linears stay packed on CUDA and run the GPU kernels (the skinny kernel for a
# prompt, the integer GEMV for each decode token), agreeing with the expanded model on the CPU.

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU_PROMPT = [1, 5, 9, 42, 7, 3, 11, 60]


def _decode_rows(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Logits of the prompt's last token, then of three tokens fed one at a time (decode-sized matmuls)."""
    cache = ContiguousKVCache(model.config, 32, dtype, device)
    rows = [forward_tokens(model, cache, GPU_PROMPT)]
    for token in (17, 4, 99):
        rows.append(forward_tokens(model, cache, [token]))
    return torch.stack(rows).float().cpu()  # [4, vocab]


def _agree_on_gpu(path) -> None:
    packed = build_model(open_checkpoint(path), dtype=torch.bfloat16, device="cuda", keep_packed=True)
    layer = packed.model.layers[0]
    assert isinstance(layer.self_attn.o_proj, PackedLinear) and isinstance(layer.mlp.down_proj, PackedLinear)
    held = [*layer.mlp.down_proj.buffers(), *layer.mlp.down_proj.parameters()]
    assert held and all(t.is_cuda for t in held)  # the packed tensors went to the GPU as they are
    expanded = build_model(open_checkpoint(path))  # float32 on the CPU: the reference
    got, want = _decode_rows(packed, "cuda", torch.bfloat16), _decode_rows(expanded, "cpu", torch.float32)
    assert ((got - want).norm() / want.norm()).item() < 3e-2  # bf16 activations against float32
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@needs_cuda
def test_awq_runs_packed_on_the_gpu(tmp_path):
    _agree_on_gpu(_awq_folder(tmp_path))


@needs_cuda
def test_gguf_q4_q8_runs_packed_on_the_gpu(tmp_path):
    pytest.importorskip("gguf")
    write_quantized_gguf(tmp_path / "m.gguf")
    _agree_on_gpu(tmp_path / "m.gguf")
