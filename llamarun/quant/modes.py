"""How linear weights are held (`--weights`, alias `--quantize`): expanded, or packed by a quantization method.

One knob, several spellings: `auto` and `exact` keep what the checkpoint implies, `int8`, `fp8` and
`int4` (group 128, or `int4-g64`) quantize online as each linear loads. Checked here, before any weight
is read: the device can run the format, and the group size divides every linear's input size. A bare `int4`
(no group asked) takes 128, or the largest offered group that fits the model (`default_int4_group`).
Imports no torch at module level (the CLI validates flags with it).
"""

from __future__ import annotations

import re
from typing import Any

from llamarun.errors import LlamarunError

QUANTIZE_FORMATS = ("fp8", "int8", "int4")
WEIGHT_MODES = ("auto", "exact", "packed", *QUANTIZE_FORMATS)
ONLINE_GROUP_SIZES = (128, 64)
# The output head under online quantization (`--head`): packed like the decoder (same, the default), kept in the
# compute dtype (exact, as vLLM's online FP8 and llm-compressor's recipes keep it), or in 8 bits (int8, fp8; Ollama's
# Q4_K_M keeps it in 6).
HEAD_FORMATS = ("same", "exact", "int8", "fp8")
HEAD_SUFFIX = "+head-"  # a mode's head suffix: int4-g128+head-int8 (eval's format names take it too)
_INT4 = re.compile(r"int4(?:-g(\d+))?")


def weights_mode(name: str, group_size: int | None = None, head: str | None = None) -> str:
    """The canonical mode for a CLI choice: `int4` with a group size becomes `int4-g64`, a `--head` other than the
    decoder's format adds its suffix (`int4-g128+head-exact`); others as they are. `int4` without a group size
    stays bare: `resolve_weights` picks the group from the model's shapes."""
    if group_size is not None and not name.startswith("int4"):
        raise LlamarunError(f"--group-size applies to int4, not to '{name}'", "drop --group-size")
    mode = f"int4-g{group_size}" if name == "int4" and group_size else name
    if head is None or head == "same":
        return mode
    if head not in HEAD_FORMATS:
        raise LlamarunError(f"unknown --head '{head}'", f"choose one of {', '.join(HEAD_FORMATS)}")
    if name not in QUANTIZE_FORMATS:
        raise LlamarunError(f"--head needs online quantization (--quantize fp8|int8|int4), not --weights {name}",
                            "add --quantize fp8|int8|int4, or drop --head")
    return mode if head == name else with_head(mode, head)


def with_head(mode: str, head: str | None) -> str:
    """`mode` with the output head held as `head` (None: as the decoder): 'int4-g128', 'exact' ->
    'int4-g128+head-exact'."""
    return mode if head is None else f"{mode}{HEAD_SUFFIX}{head}"


def split_head(mode: str) -> tuple[str, str | None]:
    """'int4-g128+head-exact' -> ('int4-g128', 'exact'); a mode without a head suffix -> (mode, None)."""
    base, sep, head = mode.partition(HEAD_SUFFIX)
    return base, (head if sep else None)


def head_method_for(mode: str) -> Any:
    """The QuantMethod that packs the output head under `mode` (the decoder's unless `--head` said), or None for
    the compute dtype."""
    base, head = split_head(mode)
    if head is None:
        return method_for(base)
    if head not in HEAD_FORMATS[1:]:
        raise LlamarunError(f"unknown head format '{head}' in weights mode '{mode}'",
                            f"choose one of {', '.join(HEAD_FORMATS)}")
    return None if head == "exact" else method_for(head)


def pack_hook(mode: str) -> Any:
    """`build_model`'s `pack` under `mode`: the decoder's method for every linear, the head's for the output head
    (marked `is_output_head` by the model); None when nothing is packed."""
    body, head = method_for(mode), head_method_for(mode)
    if body is None and head is None:
        return None

    def pack(linear: Any) -> Any:
        method = head if getattr(linear, "is_output_head", False) else body
        return linear if method is None else method.pack_linear(linear)

    return pack


def method_for(mode: str) -> Any:
    """The QuantMethod that packs the decoder's linears under `mode`, or None for float weights."""
    mode = split_head(mode)[0]
    if mode in ("auto", "exact", "packed"):  # packed: the checkpoint brings its own layouts (models/build.py)
        return None
    if mode == "fp8":
        from llamarun.quant.fp8 import Fp8Method

        return Fp8Method()
    if mode == "int8":
        from llamarun.quant.int8 import Int8Method

        return Int8Method()
    match = _INT4.fullmatch(mode)
    if match:
        from llamarun.quant.int4 import Int4Method

        return Int4Method(int(match.group(1) or 128))
    raise LlamarunError(f"unknown weights format '{mode}'", f"choose one of {', '.join(WEIGHT_MODES)}")


def packed_linear(layout: Any) -> Any:
    """The packed linear for a layout a checkpoint brought (`--weights packed`): its method follows from its kind."""
    from llamarun.quant.fp8 import Fp8Method
    from llamarun.quant.int4 import Int4Method
    from llamarun.quant.int8 import Int8Method
    from llamarun.quant.layouts import Fp8Weight, Int4Weight

    if isinstance(layout, Int4Weight):
        return Int4Method(layout.group_size).create(layout)
    if isinstance(layout, Fp8Weight):
        return Fp8Method().create(layout)
    return Int8Method().create(layout)


def resolve_weights(mode: str, *, device: str, config: Any, quantized: bool = False) -> str:
    """The mode to load with, checked against the device and the model's shapes (a clear error otherwise).

    "auto" packs int8 on CPUs when the checkpoint is already quantized (GGUF, MLX): decoding is bound by
    memory traffic there, and int8 costs a quarter of float32's bytes for a deviation far below the
    file's own quantization error. Float checkpoints stay exact unless asked.
    """
    if mode == "auto":
        from llamarun.quant.int8 import cpu_kernel_available

        return "int8" if quantized and device == "cpu" and cpu_kernel_available() else "exact"
    if mode == "exact":
        return mode
    base, head = split_head(mode)
    if head is not None:  # the decoder's format checked as itself, then the head's
        if base.split("-g")[0] not in QUANTIZE_FORMATS:  # auto, exact, packed: nothing is quantized online
            raise LlamarunError(f"a head format applies to online quantization, not to weights '{base}'",
                                "add --quantize fp8|int8|int4, or drop --head")
        resolved = resolve_weights(base, device=device, config=config, quantized=quantized)
        if head == base:  # int8+head-int8: the plain format, under its plain name
            return resolved
        head_method_for(mode)  # an unknown head fails here
        if head == "fp8":
            try:
                _check_fp8(device)
            except LlamarunError as err:
                raise LlamarunError(f"--head {err.message}", "use --head int8 or --head exact") from None
        return with_head(resolved, head)
    if mode == "int4":  # no group asked for: the model's shapes pick it
        mode = f"int4-g{default_int4_group(config)}"
    method = method_for(mode)  # an unknown name fails here
    if mode == "fp8":
        _check_fp8(device)
    elif not (device == "cpu" or device.startswith("cuda")):
        raise LlamarunError(f"{mode} weights run on CPUs and CUDA GPUs, not on '{device}'", "use --weights exact")
    group = getattr(method, "group_size", None)
    if group is not None:
        if group not in ONLINE_GROUP_SIZES:
            raise LlamarunError(f"int4 group size {group} is not offered for online quantization",
                                "use --group-size 128 or 64")
        check_group_size(config, group)
    return mode


def choose_weights(mode: str, ckpt: Any, device: str) -> str:
    """`resolve_weights` for a checkpoint: its config, and whether its file was quantized.

    "auto" on a CPU keeps a file's 4-bit weights packed when all of its quantized linears are int4
    (`keeps_int4_on_cpu`); other quantized files are packed to int8 there (`resolve_weights`).

    "packed" keeps a pre-quantized file's own packing (GGUF Q4_x onto int4, AWQ/GPTQ, MLX 4-bit,
    compressed-tensors; quant/convert/), so nothing is expanded; a float checkpoint has nothing to keep.
    """
    if mode == "packed":
        if getattr(ckpt, "packed_source", None) is None:
            raise LlamarunError("--weights packed keeps a quantized checkpoint's own packing, and this one is not "
                                "quantized", "use --quantize fp8|int8|int4 to quantize it as it loads")
        if not (device == "cpu" or device.startswith("cuda")):
            raise LlamarunError(f"packed weights run on CPUs and CUDA GPUs, not on '{device}'",
                                "use --weights exact")
        return mode
    if mode == "auto" and keeps_int4_on_cpu(ckpt, device):
        return "packed"
    return resolve_weights(mode, device=device, config=ckpt.config, quantized=ckpt.is_quantized)


def keeps_int4_on_cpu(ckpt: Any, device: str) -> bool:
    """Whether `auto` runs this checkpoint from its own 4-bit weights: on a CPU with PyTorch's int4 kernel,
    when every quantized linear maps exactly onto int4 (GGUF Q4_0/Q4_1/Q4_K, MLX 4-bit, AWQ), none is
    re-quantized or left float.

    Measured on the default model's shapes (AMD EPYC, AVX2, bfloat16 activations), the int4 kernel
    takes about the time of the int8 one per decode step and less per prefill chunk, for half the
    bytes; a file that also needs int8 or float linears (Q4_K_M's Q6_K parts expand merged linears)
    stays on `int8`, as before.
    """
    if device != "cpu" or getattr(ckpt, "packed_source", None) is None:
        return False
    import torch

    plan = getattr(ckpt, "packing_plan", "") or ""
    exact_int4 = plan.startswith("kept packed:") and "-> int4 g" in plan and ";" not in plan
    return exact_int4 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def _check_fp8(device: str) -> None:
    import torch

    from llamarun.quant.fp8 import fp8_capable

    if fp8_capable(device):
        return
    need = "fp8 needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 or higher: Ada, Hopper, Blackwell)"
    if device.startswith("cuda") and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        raise LlamarunError(f"{need}; {torch.cuda.get_device_name(device)} has {major}.{minor}",
                            "use --quantize int8 (W8A8) or --quantize int4 on this GPU")
    raise LlamarunError(f"{need}, not '{device}'", "use --quantize int8 or --quantize int4 on a CPU")


def default_int4_group(config: Any) -> int:
    """Online int4's group when none is asked for: 128, else the largest offered group that divides every linear's
    input size (64 for the default model, 576 wide), as llama.cpp's quantize falls back to a smaller block for a
    tensor its own does not divide. 128 when none fits, so that `check_group_size` says so."""
    return next(iter(_fitting_groups(config)), ONLINE_GROUP_SIZES[0])


def _fitting_groups(config: Any) -> list[int]:
    """The online int4 group sizes that divide every linear's input size, largest first."""
    inputs = _input_sizes(config)
    return [g for g in ONLINE_GROUP_SIZES if all(k % g == 0 for k in inputs)]


def _input_sizes(config: Any) -> list[int]:
    from llamarun.quant.footprint import linear_shapes

    return sorted({k for shapes in linear_shapes(config).values() for _n, k, _c in shapes})


def check_group_size(config: Any, group: int) -> None:
    """A clear error unless int4 groups of `group` inputs divide every linear's input size."""
    bad = [k for k in _input_sizes(config) if k % group]
    if bad:
        fits = _fitting_groups(config)
        hint = (f"use --group-size {fits[0]} (in eval, the format int4-g{fits[0]})" if fits
                else "no online int4 group size fits; use --quantize int8")
        raise LlamarunError(f"int4 group size {group} does not divide the input size {bad[0]} of this model", hint)


def weight_bytes(config: Any, mode: str, element: int) -> int:
    """Bytes the loaded weights take: float parts at `element` bytes, packed linears at their real size."""
    from llamarun.quant.footprint import plan_footprint, total_bytes

    if mode == "packed":  # the file's own layouts: at most one byte per weight (int8), planned as such
        mode = "int8"
    return total_bytes(plan_footprint(config, method_for(mode), element, "", head_method=head_method_for(mode)))
