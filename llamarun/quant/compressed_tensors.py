"""Our packed layouts <-> the compressed-tensors checkpoint layout (what vLLM and llm-compressor read and write).

Per linear `<prefix>.`:
- fp8 ("float-quantized"): `weight` float8_e4m3fn [N, K], `weight_scale` float32 [N, 1];
- int8 ("int-quantized"): `weight` int8 [N, K], `weight_scale` float32 [N, 1];
- int4 ("pack-quantized", asymmetric groups): `weight_packed` int32 [N, K / 8] (eight nibbles a word, the
  first value in the lowest bits, each stored as the signed value + 8, i.e. our unsigned q),
  `weight_scale` [N, K / G], `weight_zero_point` int32 [ceil(N / 8), K / G] (zero points packed the same
  way down the output dimension), `weight_shape` int64 [2]. Dequantized, `(q - zero) * scale`, which is
  our `q * scale + min` with `min = -zero * scale`.
The tests check these tensors against the `compressed-tensors` package's own decompression.
"""

from __future__ import annotations

from typing import Any

import torch

from llamarun.errors import CheckpointError
from llamarun.quant.layouts import Fp8Weight, Int4Weight, Int8Weight, pack_nibbles, unpack_nibbles
from llamarun.quant.rtn import int4_zero_points

CT_FORMATS = {"fp8": "float-quantized", "int8": "int-quantized", "int4": "pack-quantized"}
# The linears llm-compressor quantizes by default; the head and embeddings stay in the model dtype, so
# every reader (vLLM included) takes the file.
QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantization_config(fmt: str, group_size: int | None = None) -> dict[str, Any]:
    """The `quantization_config` entry of config.json for one of our formats."""
    if fmt == "int4":
        weights = _args(num_bits=4, type="int", symmetric=False, strategy="group", group_size=group_size)
        activations = None
    else:
        kind = "float" if fmt == "fp8" else "int"
        weights = _args(num_bits=8, type=kind, symmetric=True, strategy="channel")
        activations = _args(num_bits=8, type=kind, symmetric=True, strategy="token", dynamic=True)
    group = {"targets": ["Linear"], "weights": weights, "input_activations": activations,
             "output_activations": None, "format": CT_FORMATS[fmt]}
    return {"quant_method": "compressed-tensors", "format": CT_FORMATS[fmt], "quantization_status": "compressed",
            "config_groups": {"group_0": group}, "ignore": ["lm_head"], "kv_cache_scheme": None,
            "global_compression_ratio": None}


def _args(*, num_bits: int, type: str, symmetric: bool, strategy: str, group_size: int | None = None,
          dynamic: bool = False) -> dict[str, Any]:
    return {"num_bits": num_bits, "type": type, "symmetric": symmetric, "strategy": strategy,
            "group_size": group_size, "dynamic": dynamic, "actorder": None, "block_structure": None,
            "observer": None if dynamic else "minmax", "observer_kwargs": {}}


def to_compressed_tensors(layout: Int4Weight | Fp8Weight | Int8Weight) -> dict[str, torch.Tensor]:
    """Suffix (`weight_packed`, `weight_scale`, ...) -> tensor, for one linear."""
    if isinstance(layout, Int4Weight):
        n, k = layout.shape
        q = unpack_nibbles(layout.qweight)  # [N, K] 0..15
        zero = int4_zero_points(layout)  # [N, K // G] 0..15
        zero_rows = torch.nn.functional.pad(zero, (0, 0, 0, -n % 8))  # [N rounded up to 8, K // G]
        return {"weight_packed": _words(q), "weight_scale": layout.scales.contiguous(),
                "weight_zero_point": _words(zero_rows.t().contiguous()).t().contiguous(),
                "weight_shape": torch.tensor([n, k], dtype=torch.int64)}
    if isinstance(layout, Fp8Weight):
        scale = layout.scale.float().expand(layout.shape[0]).reshape(-1, 1).contiguous()  # [N, 1]
        return {"weight": layout.weight.contiguous(), "weight_scale": scale}
    if isinstance(layout, Int8Weight):
        return {"weight": layout.qweight.contiguous(), "weight_scale": layout.scale.float().reshape(-1, 1)}
    raise TypeError(f"not a packed weight: {type(layout).__name__}")


def from_compressed_tensors(tensors: dict[str, torch.Tensor], fmt: str,
                            group_size: int | None = None) -> Int4Weight | Fp8Weight | Int8Weight:
    """One linear's compressed-tensors tensors (by suffix) as our layout, exactly."""
    if fmt == "fp8":
        return Fp8Weight(weight=tensors["weight"], scale=tensors["weight_scale"].float().reshape(-1))
    if fmt == "int8":
        return Int8Weight(qweight=tensors["weight"], scale=tensors["weight_scale"].float().reshape(-1))
    if fmt != "int4":
        raise CheckpointError(f"unknown compressed-tensors format '{fmt}'", "expected fp8, int8 or int4")
    n, k = (int(d) for d in tensors["weight_shape"])
    scales = tensors["weight_scale"]  # [N, K // G]
    q = _unwords(tensors["weight_packed"], k)  # [N, K]
    zero = _unwords(tensors["weight_zero_point"].t().contiguous(), tensors["weight_zero_point"].shape[0] * 8)
    zero = zero.t()[:n]  # [N, K // G]
    mins = (-zero.float() * scales.float()).to(scales.dtype)
    return Int4Weight(qweight=pack_nibbles(q), scales=scales, mins=mins, group_size=group_size or k // scales.shape[1])


def _words(q: torch.Tensor) -> torch.Tensor:
    """[R, C] values 0..15 (C a multiple of 8) -> [R, C / 8] int32, value j of a word in bits 4j..4j+3."""
    r, c = q.shape
    nibbles = q.to(torch.int64).reshape(r, c // 8, 8)  # [R, words, 8]
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=q.device)  # [8]
    words = (nibbles << shifts).sum(dim=-1)  # [R, words], 0 .. 2^32 - 1
    return (words - ((words >> 31) << 32)).to(torch.int32)  # the same bits as a signed int32


def _unwords(words: torch.Tensor, columns: int) -> torch.Tensor:
    """The inverse of `_words`: [R, C / 8] int32 -> [R, columns] uint8 values 0..15."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=words.device)  # [8]
    nibbles = (words.to(torch.int64)[..., None] >> shifts) & 15  # [R, words, 8]
    return nibbles.reshape(words.shape[0], -1)[:, :columns].to(torch.uint8)
