"""Pre-quantized Hugging Face checkpoints (AWQ, GPTQ, compressed-tensors) as a Checkpoint.

Each quantized linear's side tensors (qweight/qzeros/scales, weight_packed/weight_scale/...) become
one HF `*.weight`: packed (quant/convert) in `packed_tensors`, expanded from that same packed form
in `tensors`, so both paths agree by construction. GPTQ act-order weights, which no contiguous-group
layout holds, are expanded in both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from llamarun.config import ModelConfig
from llamarun.errors import ConfigMismatchError
from llamarun.loaders import hf_folder
from llamarun.loaders.checkpoint import Checkpoint, is_linear_weight
from llamarun.loaders.quant_config import QuantScheme, parse_quantization_config
from llamarun.quant.convert.plan import describe_plan
from llamarun.quant.convert.report import PackingReport
from llamarun.quant.convert.result import Conversion

# The tensor that marks a module as quantized, and every per-module tensor that is not a weight of ours.
_MARKER = {"awq": "qweight", "gptq": "qweight", "pack-quantized": "weight_packed"}
_SIDE = ("qweight", "qzeros", "scales", "g_idx", "weight_packed", "weight_scale", "weight_zero_point",
         "weight_shape", "weight_g_idx", "input_scale", "input_zero_point", "k_scale", "v_scale")
Getter = Callable[[str], torch.Tensor]


def _marker(scheme: QuantScheme) -> str:
    return _MARKER.get(scheme.method) or _MARKER.get(scheme.format) or "weight_scale"


def convert_module(scheme: QuantScheme, module: str, get: Getter, has: Callable[[str], bool]) -> Conversion:
    """The packed weight of one quantized linear; UnsupportedError for GPTQ act-order."""
    from llamarun.quant.convert import awq, compressed, gptq

    def opt(suffix: str) -> torch.Tensor | None:
        return get(f"{module}.{suffix}") if has(f"{module}.{suffix}") else None

    if scheme.method == "awq":
        return awq.awq_to_int4(get(f"{module}.qweight"), get(f"{module}.qzeros"), get(f"{module}.scales"),
                               scheme.group_size or 0)
    if scheme.method == "gptq":
        qweight = get(f"{module}.qweight")
        return gptq.gptq_to_int4(qweight, get(f"{module}.qzeros"), get(f"{module}.scales"), opt("g_idx"),
                                 scheme.group_size or qweight.shape[0] * 8, v1_zeros=scheme.format == "gptq")
    if scheme.format == "pack-quantized":
        shape = get(f"{module}.weight_shape")
        g_idx = opt("weight_g_idx")
        if g_idx is not None and gptq.has_act_order(g_idx, scheme.group_size or int(shape[1])):
            raise _act_order_error()
        return compressed.ct_pack_quantized(get(f"{module}.weight_packed"), get(f"{module}.weight_scale"), shape,
                                            scheme.bits, scheme.group_size, opt("weight_zero_point"))
    weight, scale = get(f"{module}.weight"), get(f"{module}.weight_scale")
    if weight.dtype == torch.float8_e4m3fn:
        return compressed.ct_fp8(weight, scale)
    return compressed.ct_int8(weight, scale, opt("weight_zero_point"))


def _act_order_error() -> Exception:
    from llamarun.errors import UnsupportedError

    return UnsupportedError("act-order weights have groups scattered along the input, which the int4 layout "
                            "cannot hold", "load them expanded, or use a checkpoint quantized without act-order")


def _is_act_order(scheme: QuantScheme, module: str, get: Getter, has: Callable[[str], bool]) -> bool:
    from llamarun.quant.convert.gptq import has_act_order

    if scheme.method != "gptq" or not has(f"{module}.g_idx"):
        return False
    return has_act_order(get(f"{module}.g_idx"), scheme.group_size or get(f"{module}.qweight").shape[0] * 8)


def open_quantized_hf(folder: Path, cfg: dict[str, Any]) -> Checkpoint:
    """An AWQ, GPTQ or compressed-tensors folder (detected from `quantization_config`)."""
    scheme = parse_quantization_config(cfg.get("quantization_config"))
    config = ModelConfig.from_hf(cfg)
    files = hf_folder.safetensors_files(folder)
    headers = {f: hf_folder.read_safetensors_header(f) for f in files}
    where = {name: file for file, header in headers.items() for name in header}
    marker = _marker(scheme)
    modules = {n[: -len(marker) - 1] for n in where if n.endswith(f".{marker}")}
    if not modules:
        raise ConfigMismatchError(f"{folder} declares {scheme.label} but holds no '{marker}' tensors",
                                  "the config and weights do not belong together")
    names: list[str] = []
    for name in where:
        module, _, leaf = name.rpartition(".")
        if module in modules and leaf == marker:
            names.append(f"{module}.weight")
        elif not (leaf in _SIDE or (module in modules and leaf == "weight")):
            names.append(name)
    report = PackingReport()

    def stream(dtype: torch.dtype, keep_packed: bool) -> Iterator[tuple[str, object]]:
        from safetensors import safe_open

        from llamarun.quant.convert.gptq import gptq_dequantize
        from llamarun.quant.layouts import dequantize

        handles = {f: safe_open(str(f), framework="pt") for f in files}

        def get(name: str) -> torch.Tensor:
            if name not in where:
                raise ConfigMismatchError(f"checkpoint lacks '{name}'", "the file may be truncated")
            return handles[where[name]].get_tensor(name)

        for name in names:
            module = name.rsplit(".", 1)[0]
            if module not in modules:
                yield name, get(name).to(dtype)
            elif _is_act_order(scheme, module, get, where.__contains__):
                if keep_packed:
                    report.record_expanded("GPTQ act-order")
                yield name, gptq_dequantize(get(f"{module}.qweight"), get(f"{module}.qzeros"),
                                            get(f"{module}.scales"), get(f"{module}.g_idx"), scheme.group_size or 0,
                                            v1_zeros=scheme.format == "gptq").to(dtype)
            else:
                conversion = convert_module(scheme, module, get, where.__contains__)
                if keep_packed and is_linear_weight(name):
                    report.record(conversion)
                    yield name, conversion.weight
                else:
                    yield name, dequantize(conversion.weight, dtype)

    target = {"awq": f"int4 g{scheme.group_size}", "gptq": f"int4 g{scheme.group_size or 'K'}"}.get(scheme.method)
    if target is None:
        target = "fp8" if scheme.weight_type == "float" else f"int{scheme.bits}"
    exact = not (scheme.format == "pack-quantized" and scheme.bits == 8 and (scheme.group_size or not scheme.symmetric))
    plan = describe_plan([(scheme.label, None if scheme.desc_act else target, exact) for _ in sorted(modules)])
    return Checkpoint(
        format="hf", path=folder, config=config, tensor_names=names,
        tensors=lambda dtype: stream(dtype, False), packed_source=lambda dtype: stream(dtype, True),
        **hf_folder.text_side(folder), quantization=scheme.label, is_quantized=True,
        packing=report, packing_plan=plan,
    )
