"""GGUF dequantization: bit-for-bit equal to the `gguf` package's reference, for each supported type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from llamarun.errors import CheckpointError, UnsupportedError
from llamarun.loaders.gguf import SUPPORTED_TYPES, dequantize, load_tensor, read_gguf
from llamarun.loaders.gguf.ggml_types import BLOCK_GEOMETRY, GGMLType

QUANTIZABLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16]
# K-quants: the gguf package cannot quantize them, so build random blocks. Byte offsets of the f16 scale
# fields, which must hold finite values (random bits there give inf/nan, and nan never compares equal).
K_SCALE_FIELDS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def same_bits(ours: torch.Tensor, ref: np.ndarray) -> bool:
    """Bitwise equality: stricter than torch.equal (tells -0.0 from 0.0)."""
    ref_t = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))
    return ours.dtype == torch.float32 and ours.shape == ref_t.shape and torch.equal(
        ours.view(torch.int32), ref_t.view(torch.int32)
    )


def ours_from_bytes(packed: np.ndarray, qtype: Q, shape: tuple[int, ...], **kw) -> torch.Tensor:
    raw = torch.from_numpy(np.ascontiguousarray(packed).view(np.uint8).reshape(-1))
    return dequantize(raw, int(qtype), shape, **kw)


def random_k_blocks(qtype: Q, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    _, type_size = BLOCK_GEOMETRY[GGMLType(qtype)]
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for at in K_SCALE_FIELDS[qtype]:
        scale = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        scale[:3] = [0.0, -0.0, 65504.0]  # a zero, a negative zero and the largest half
        blocks[:, at : at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def test_supported_types_are_the_promised_ones():
    required = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}
    assert required | {"Q2_K", "Q3_K"} == {t.name for t in SUPPORTED_TYPES}


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: t.name)
def test_quantized_round_trip_matches_reference(qtype: Q):
    rng = np.random.default_rng(int(qtype))
    x = (rng.standard_normal((12, 256)) * rng.uniform(0.01, 10, (12, 1))).astype(np.float32)
    x[0] = 0.0  # an all-zero row: scale 0
    x[1, :32] = -3.0  # a constant block
    packed = ref_quantize(x, qtype)
    ours = ours_from_bytes(packed, qtype, (12, 256))
    assert same_bits(ours, ref_dequantize(packed, qtype))
    # and it is a real dequantization, close to the input
    assert torch.allclose(ours, torch.from_numpy(x), atol=float(np.abs(x).max()) * 0.2)


@pytest.mark.parametrize("qtype", list(K_SCALE_FIELDS), ids=lambda t: t.name)
def test_k_quants_match_reference(qtype: Q):
    rng = np.random.default_rng(100 + int(qtype))
    blocks = random_k_blocks(qtype, 48, rng)
    shape = (6, 8 * 256)
    ours = ours_from_bytes(blocks, qtype, shape)
    assert same_bits(ours, ref_dequantize(blocks.reshape(6, -1), qtype))


def test_f32_and_f16_match_reference():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    assert same_bits(ours_from_bytes(x, Q.F32, (3, 5, 8)), x)
    halves = rng.integers(0, 2**16, 4096, dtype=np.uint16)
    halves = halves[(halves & 0x7C00) != 0x7C00].view(np.float16)  # all finite halves, subnormals included
    ref = ref_dequantize(halves.view(np.uint8), Q.F16)
    assert same_bits(ours_from_bytes(halves, Q.F16, halves.shape), ref)


def test_output_dtype():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    packed = ref_quantize(x, Q.Q8_0)
    ref = torch.from_numpy(ref_dequantize(packed, Q.Q8_0))
    for dtype in (torch.bfloat16, torch.float16):
        out = ours_from_bytes(packed, Q.Q8_0, (4, 64), dtype=dtype)
        assert out.dtype == dtype and torch.equal(out, ref.to(dtype))
    bf16 = torch.from_numpy(x).to(torch.bfloat16)
    out = dequantize(bf16.view(torch.uint8).reshape(-1), int(Q.BF16), (4, 64), dtype=torch.bfloat16)
    assert torch.equal(out, bf16)


def test_unsupported_type_names_it_and_lists_supported():
    raw = torch.zeros(66, dtype=torch.uint8)
    with pytest.raises(UnsupportedError) as info:
        dequantize(raw, int(Q.IQ2_XXS), (256,))
    text = str(info.value)
    assert "IQ2_XXS" in text and "Q4_K" in text and "Q8_0" in text
    with pytest.raises(UnsupportedError, match="type 99"):
        dequantize(raw, 99, (256,))


def test_wrong_byte_count_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="needs 68 bytes, got 66"):
        dequantize(torch.zeros(66, dtype=torch.uint8), int(Q.Q8_0), (64,))
    with pytest.raises(CheckpointError):  # rows must hold whole blocks
        dequantize(torch.zeros(68, dtype=torch.uint8), int(Q.Q8_0), (64, 1))


def test_default_model_all_tensors(default_gguf: Path):
    f = read_gguf(default_gguf)
    types = set()
    for name, info in f.tensors.items():
        t = load_tensor(f, name)
        assert t.shape == info.shape and t.dtype == torch.float32, name
        assert torch.isfinite(t).all(), name
        types.add(info.type_name)
    assert {"Q4_1", "Q8_0", "F32"} <= types
    for name in ("token_embd.weight", "blk.0.ffn_down.weight", "blk.29.attn_k.weight", "output_norm.weight"):
        info = f.tensors[name]
        ref = ref_dequantize(f.raw(name).reshape(info.shape[0], -1), Q(info.ggml_type))
        assert same_bits(load_tensor(f, name).reshape(info.shape[0], -1), ref), name


def test_plain_tensor_is_zero_copy_and_never_writes_the_file(default_gguf: Path):
    f = read_gguf(default_gguf)
    name = "output_norm.weight"
    before = f.raw(name).tobytes()
    t = load_tensor(f, name)
    assert t.untyped_storage().data_ptr() == torch.from_numpy(f.raw(name)).untyped_storage().data_ptr()
    t.add_(1.0)  # copy-on-write map: allowed, and private to this process
    assert read_gguf(default_gguf).raw(name).tobytes() == before
