"""`llamarun quantize MODEL --format fp8|int8|int4 OUT_DIR`: a reusable compressed-tensors checkpoint.

torch is imported inside the handler only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llamarun.errors import LlamarunError
from llamarun.quant.modes import ONLINE_GROUP_SIZES, QUANTIZE_FORMATS


def register(subparsers: Any) -> None:
    """Add `quantize` to the `llamarun` parser."""
    p = subparsers.add_parser(
        "quantize", help="quantize a model and save it as a compressed-tensors checkpoint",
        description="Quantize the decoder linears of a Hugging Face checkpoint (round to nearest; GPTQ against "
                    "calibration text with --gptq; SmoothQuant first with --smooth) and write a compressed-tensors "
                    "folder that llamarun, vLLM and others load.")
    p.add_argument("model", help="model name or path of a Hugging Face safetensors checkpoint")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must not exist or be empty)")
    p.add_argument("--format", required=True, choices=QUANTIZE_FORMATS,
                   help="fp8 (W8A8, per-channel weights, per-token activations at run time), int8 (W8A8), "
                        "int4 (W4A16, asymmetric groups)")
    p.add_argument("--group-size", type=int, choices=ONLINE_GROUP_SIZES, metavar="{128,64}",
                   help="int4 only: inputs sharing one scale and zero point (default 128, or 64 where 128 does not "
                        "divide the model's input sizes)")
    p.add_argument("--gptq", action="store_true",
                   help="int4 only: round with GPTQ against calibration text instead of to nearest (slower, closer "
                        "to the original on real text)")
    p.add_argument("--smooth", action="store_true",
                   help="fp8/int8: SmoothQuant first, moving the activations' outlier channels into the weights "
                        "(calibrated on text; the float model is unchanged, the W8A8 error smaller)")
    p.add_argument("--calibration", metavar="FILE",
                   help="--gptq/--smooth: UTF-8 text to calibrate on, its first 2048 tokens (default: shipped text)")
    p.add_argument("--device", help="where to quantize: cpu or cuda (default: cuda when available)")
    p.set_defaults(handler=quantize)


def quantize(args: argparse.Namespace) -> int:
    from llamarun.loaders.registry import open_checkpoint
    from llamarun.quant.modes import check_group_size, default_int4_group, weights_mode
    from llamarun.quant.save import check_source, save_quantized
    from llamarun.store.resolve import resolve_model
    from llamarun.utils.devices import check_device, default_device
    from llamarun.utils.progress import count_bar

    mode = weights_mode(args.format, args.group_size)  # --group-size without int4 fails here
    if args.gptq and args.format != "int4":
        raise LlamarunError(f"--gptq rounds int4 weights, not {args.format}", "use --format int4 with --gptq")
    if args.smooth and args.format == "int4":
        raise LlamarunError("--smooth prepares the activations of fp8 and int8 (W8A8); int4 is weight-only",
                            "use --gptq for int4, or --smooth with --format int8 or fp8")
    if args.calibration and not (args.gptq or args.smooth):
        raise LlamarunError("--calibration is for --gptq or --smooth", "add one, or leave --calibration out")
    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LlamarunError(f"{out} exists and is not an empty folder", "give a new folder for the checkpoint")
    device = check_device(args.device or default_device())
    resolved = resolve_model(args.model)
    ckpt = open_checkpoint(resolved.path, resolved.format)
    check_source(ckpt)  # before GPTQ or SmoothQuant spend minutes calibrating
    group = None
    if args.format == "int4":  # the group asked for, else the one that fits the model (quant/modes.py)
        group = args.group_size or default_int4_group(ckpt.config)
        check_group_size(ckpt.config, group)
        mode = weights_mode("int4", group)
    layouts = _gptq_layouts(args, ckpt, group, device) if args.gptq else None
    replaced = _smoothed(args, ckpt, device) if args.smooth else None
    with count_bar("quantizing", len(ckpt.tensor_names), enabled=None if sys.stderr.isatty() else False) as bar:
        files = save_quantized(ckpt, out, args.format, group_size=group, device=device,
                               on_tensor=lambda _name: bar.advance(), layouts=layouts, replaced=replaced)
    size = sum(f.stat().st_size for f in files)
    how = " with GPTQ" if args.gptq else " after SmoothQuant" if args.smooth else ""
    print(f"wrote {resolved.name} as {mode}{how} (compressed-tensors) to {out}: {len(files)} files, "
          f"{size / 1e9:.2f} GB")
    return 0


def _calibration_ids(args: argparse.Namespace, ckpt: Any) -> list[int]:
    from llamarun.eval.text import DEFAULT_TEXT, read_text, text_tokens
    from llamarun.quant.gptq_checkpoint import CALIBRATION_TOKENS

    return text_tokens(ckpt.tokenizer(), read_text(args.calibration or DEFAULT_TEXT))[:CALIBRATION_TOKENS]


def _smoothed(args: argparse.Namespace, ckpt: Any, device: str) -> dict:
    """SmoothQuant's weights and norms, calibrated on --calibration (or the shipped text)."""
    from llamarun.quant.gptq_checkpoint import smoothed_checkpoint_tensors

    return smoothed_checkpoint_tensors(ckpt, _calibration_ids(args, ckpt), device)


def _gptq_layouts(args: argparse.Namespace, ckpt: Any, group_size: int, device: str) -> dict:
    """GPTQ's layouts for every decoder linear, calibrated on --calibration (or the shipped text)."""
    from llamarun.quant.gptq_checkpoint import gptq_checkpoint_layouts
    from llamarun.utils.progress import count_bar

    ids = _calibration_ids(args, ckpt)
    layers = ckpt.config.num_layers
    with count_bar("GPTQ", layers, unit="layers", enabled=None if sys.stderr.isatty() else False) as bar:
        return gptq_checkpoint_layouts(ckpt, ids, group_size, device, on_layer=lambda _i: bar.advance())
