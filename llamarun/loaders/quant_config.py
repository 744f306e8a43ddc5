"""config.json's `quantization_config` -> the one scheme a pre-quantized HF checkpoint uses (no torch).

Formats are named by `quant_method` (DESIGN decision 3, never by file names):
- "awq": AutoAWQ GEMM layout, 4 bits, `group_size` (or `q_group_size`), zero points;
- "gptq": 4 bits, `group_size` (-1: one group per row), `desc_act`, and `checkpoint_format`
  ("gptq" stores zero - 1, "gptq_v2" the zero itself);
- "compressed-tensors": `format` ("pack-quantized", "float-quantized", "int-quantized",
  "naive-quantized") and the weight arguments of its `config_groups`, plus `ignore`d modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llamarun.errors import ConfigMismatchError, UnsupportedError

SUPPORTED_METHODS = ("awq", "gptq", "compressed-tensors")
CT_FORMATS = ("pack-quantized", "float-quantized", "int-quantized", "naive-quantized")


@dataclass(frozen=True)
class QuantScheme:
    """How one checkpoint's linear weights are quantized."""

    method: str  # one of SUPPORTED_METHODS
    bits: int
    group_size: int | None  # None: one scale per output channel (or per tensor)
    format: str = ""  # compressed-tensors' format; "gptq" / "gptq_v2" for GPTQ; "gemm" for AWQ
    weight_type: str = "int"  # "int" or "float" (compressed-tensors FP8)
    desc_act: bool = False
    symmetric: bool = True

    @property
    def label(self) -> str:
        """e.g. "AWQ int4 g128", "compressed-tensors float-quantized 8-bit"."""
        group = f" g{self.group_size}" if self.group_size else ""
        if self.method == "compressed-tensors":
            return f"compressed-tensors {self.format} {self.weight_type}{self.bits}{group}"
        return f"{self.method.upper()} int{self.bits}{group}"


def parse_quantization_config(q: Any) -> QuantScheme:
    """The scheme of a `quantization_config`, or a clear error naming what llamarun can load."""
    if not isinstance(q, dict):
        raise ConfigMismatchError("config.json's quantization_config is not an object")
    method = str(q.get("quant_method") or q.get("format") or "unknown").lower()
    if method == "awq":
        return _awq(q)
    if method == "gptq":
        return _gptq(q)
    if method == "compressed-tensors":
        return _compressed(q)
    raise UnsupportedError(f"checkpoint is quantized with '{method}', which llamarun does not load",
                           f"supported quant_method values: {', '.join(SUPPORTED_METHODS)}; "
                           "or use the bf16 checkpoint, a GGUF or an MLX quantization")


def _int(q: dict, *keys: str, default: int | None = None) -> int:
    for key in keys:
        if q.get(key) is not None:
            try:
                return int(q[key])
            except (TypeError, ValueError):
                raise ConfigMismatchError(f"quantization_config.{key} is not an integer: {q[key]!r}") from None
    if default is None:
        raise ConfigMismatchError(f"quantization_config lacks {keys[0]}")
    return default


def _four_bits(method: str, bits: int) -> None:
    if bits != 4:
        raise UnsupportedError(f"{method} {bits}-bit checkpoints are not supported", f"use a 4-bit {method} checkpoint")


def _awq(q: dict) -> QuantScheme:
    bits = _int(q, "bits", "w_bit")
    _four_bits("AWQ", bits)
    version = str(q.get("version") or "gemm").lower()
    if version != "gemm":
        raise UnsupportedError(f"AWQ version '{version}' stores another layout; only 'gemm' is supported")
    if q.get("zero_point") is False:
        raise UnsupportedError("AWQ without zero points is not supported")
    return QuantScheme("awq", bits, _int(q, "group_size", "q_group_size"), format="gemm", symmetric=False)


def _gptq(q: dict) -> QuantScheme:
    bits = _int(q, "bits")
    _four_bits("GPTQ", bits)
    group = _int(q, "group_size", default=-1)
    fmt = str(q.get("checkpoint_format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise UnsupportedError(f"GPTQ checkpoint_format '{fmt}' is not supported", "supported: gptq, gptq_v2")
    return QuantScheme("gptq", bits, None if group == -1 else group, format=fmt,
                       desc_act=bool(q.get("desc_act")), symmetric=bool(q.get("sym", True)))


def _compressed(q: dict) -> QuantScheme:
    groups = q.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ConfigMismatchError("compressed-tensors quantization_config has no config_groups")
    schemes = set()
    for group in groups.values():
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict):
            raise UnsupportedError("a compressed-tensors config group quantizes no weights",
                                   "only weight quantization schemes are supported")
        fmt = str(group.get("format") or q.get("format") or "").lower()
        strategy = str(weights.get("strategy") or "tensor").lower()
        if strategy not in ("tensor", "channel", "group"):
            raise UnsupportedError(f"compressed-tensors '{strategy}' weight strategy is not supported",
                                   "supported: tensor, channel and group")
        schemes.add((fmt, int(weights.get("num_bits", 8)), str(weights.get("type", "int")).lower(),
                     int(weights["group_size"]) if strategy == "group" and weights.get("group_size") else None,
                     bool(weights.get("symmetric", True)), weights.get("actorder") == "group"))
    if len(schemes) > 1:
        raise UnsupportedError("compressed-tensors checkpoints mixing several weight schemes are not supported")
    fmt, bits, wtype, group, symmetric, group_actorder = schemes.pop()
    if fmt not in CT_FORMATS:
        raise UnsupportedError(f"compressed-tensors format '{fmt}' is not supported",
                               f"supported: {', '.join(CT_FORMATS)}")
    if q.get("quantization_status") not in (None, "compressed"):
        raise UnsupportedError(f"compressed-tensors status '{q['quantization_status']}': weights are not compressed",
                               "save the model compressed (llm-compressor's save_compressed=True)")
    return QuantScheme("compressed-tensors", bits, group, format=fmt, weight_type=wtype,
                       desc_act=group_actorder, symmetric=symmetric)
