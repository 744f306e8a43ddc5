"""Formats `llamarun eval` compares: a name the user types -> the keyword arguments `load_model` takes.

The table is the only place that knows what a name means, so a new weight format (a new `--weights`
mode in quant/modes.py) becomes evaluable by adding one row here. A row whose mode the loader does
not offer yet (fp8 and int4 until their methods land) is listed as unavailable, not as unknown.
No torch here: dtypes are named, and the loader turns names into torch dtypes.
"""

from __future__ import annotations

from llamarun.errors import LlamarunError
from llamarun.quant.modes import HEAD_FORMATS, HEAD_SUFFIX, split_head

# name -> load_model keyword arguments ("dtype" as a torch attribute name).
FORMATS: dict[str, dict[str, str]] = {
    "exact": {"weights": "exact"},  # expanded, in the device's compute dtype: float32 on CPUs, bfloat16 on GPUs
    "bf16": {"weights": "exact", "dtype": "bfloat16"},
    "fp32": {"weights": "exact", "dtype": "float32"},
    "int8": {"weights": "int8"},  # weight-only int8 per output channel (the CPU path today)
    "fp8": {"weights": "fp8"},
    "int4": {"weights": "int4-g128"},  # int4 groups of 128 with zero points (a row means one group size)
    "int4-g64": {"weights": "int4-g64"},
    "packed": {"weights": "packed"},  # a quantized file's own packing (GGUF Q4_x, MLX 4-bit -> int4 g32)
    # int4 rounded by GPTQ against calibration text (quant/gptq.py): loaded exact, then quantized layer by layer
    "int4-gptq": {"weights": "exact", "gptq": "128"},
    "int4-gptq-g64": {"weights": "exact", "gptq": "64"},
    # W8A8 after SmoothQuant moved the activations' outlier channels into the weights (quant/smooth.py): loaded
    # exact, smoothed against calibration text, then quantized as the plain format is
    "int8-smooth": {"weights": "exact", "smooth": "int8"},
    "fp8-smooth": {"weights": "exact", "smooth": "fp8"},
}
DEFAULT_FORMATS = "exact,int8"
# Any quantized format may name how its output head is held, as `--head` does: `int4-gptq-g64+head-exact`.
_FLOAT_FORMATS = ("exact", "bf16", "fp32", "packed")


def available_formats() -> list[str]:
    """Names whose weights mode the loader offers in this build."""
    from llamarun.quant.modes import WEIGHT_MODES

    # "int4-g64" is the int4 mode with its group size folded in (quant/modes.weights_mode)
    return [name for name, options in FORMATS.items() if options["weights"].split("-g")[0] in WEIGHT_MODES]


def needs_calibration(names: list[str]) -> bool:
    """Whether any of these formats is quantized against calibration text (GPTQ, SmoothQuant)."""
    return any("gptq" in FORMATS[base] or "smooth" in FORMATS[base] for base in (split_head(n)[0] for n in names))


def load_options(name: str) -> dict[str, str]:
    """The `load_model` keyword arguments for format `name` (with "head" when it names one), or a clear error
    naming the formats that exist."""
    available = available_formats()
    base, head = split_head(name)
    if base not in FORMATS:
        raise LlamarunError(f"unknown format '{base}'", f"choose from {', '.join(available)}")
    if base not in available:
        raise LlamarunError(f"format '{base}' is not available in this build of llamarun",
                            f"choose from {', '.join(available)}")
    options = dict(FORMATS[base])
    if head is not None:
        if head not in HEAD_FORMATS[1:]:
            raise LlamarunError(f"unknown head '{head}' in format '{name}'",
                                f"add {HEAD_SUFFIX}exact, {HEAD_SUFFIX}int8 or {HEAD_SUFFIX}fp8")
        if base in _FLOAT_FORMATS:
            raise LlamarunError(f"format '{base}' quantizes nothing, so its head cannot be held apart",
                                f"add {HEAD_SUFFIX}{head} to a quantized format such as int8 or int4-gptq")
        options["head"] = head
    return options


def parse_formats(spec: str) -> list[str]:
    """Comma-separated names -> the list, each checked; the first is the reference the others are compared to."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise LlamarunError("no formats given", f"for example --formats {DEFAULT_FORMATS}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise LlamarunError(f"format '{repeated[0]}' is listed twice", "name each format once")
    for name in names:
        load_options(name)
    return names
