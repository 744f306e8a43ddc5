"""The one weights knob of `run`, `serve`, `bench` and `embed`: `--weights`, with `--quantize` as its alias.

`--weights` is the name users and scripts already have (auto, exact, int8); the quantization formats
join it, and `--quantize fp8|int8|int4` reads naturally for the online formats. Both write the same
setting, so they cannot disagree; giving both is an error. `--group-size` picks int4's group.
No torch here: the device checks happen where the model loads (quant/modes.py).
"""

from __future__ import annotations

import argparse
from typing import Any

from llamarun.quant.modes import HEAD_FORMATS, ONLINE_GROUP_SIZES, QUANTIZE_FORMATS, WEIGHT_MODES, weights_mode


def add_weights_flags(parser: Any) -> None:
    """Add `--weights`/`--quantize` (one setting) and `--group-size` to a parser or argument group."""
    one = parser.add_mutually_exclusive_group()
    one.add_argument("--weights", choices=WEIGHT_MODES, default="auto",
                     help="how linear weights are held: auto (default: on CPUs, a file whose quantized linears are "
                          "all 4-bit (GGUF Q4_0/Q4_1/Q4_K, MLX 4-bit) runs from them (packed), other GGUF/MLX "
                          "quantized files as int8; else as the checkpoint), packed (keep the file's own "
                          "packing), exact (expanded to the compute dtype), or quantized "
                          "online as they load: fp8 (W8A8, GPUs with compute capability 8.9+), int8 (W8A8 on "
                          "GPUs, weight-only on CPUs), int4 (W4A16, groups of --group-size)")
    one.add_argument("--quantize", dest="weights", choices=QUANTIZE_FORMATS, default=argparse.SUPPRESS,
                     help="quantize the weights online as they load (the same setting as --weights)")
    parser.add_argument("--group-size", type=int, choices=ONLINE_GROUP_SIZES, metavar="{128,64}",
                        help="int4 only: inputs sharing one scale and minimum (default 128, or 64 where 128 does not "
                             "divide the model's input sizes)")
    parser.add_argument("--head", choices=HEAD_FORMATS,
                        help="with --quantize: how the output head is held: same as the other linears (default), "
                             "exact (the compute dtype, as vLLM's online fp8 keeps it: most accurate, 2 bytes a "
                             "weight), int8, or fp8. The head is one matmul but the largest of a small model, and "
                             "its rounding reaches every token's distribution")


def weights_from_args(args: argparse.Namespace) -> str:
    """The weights mode the flags ask for (`int4` with `--group-size 64` is `int4-g64`; `--head exact` adds
    `+head-exact`)."""
    return weights_mode(args.weights, args.group_size, getattr(args, "head", None))
