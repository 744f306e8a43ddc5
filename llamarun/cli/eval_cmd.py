"""`llamarun eval MODEL`: perplexity, KL divergence from a reference and top-1 agreement of weight formats.

Each format in `--formats` is loaded in turn (the first is the reference) and run over the same text in
windows, with no generation; the table goes to stdout, the record to `--json`. torch is imported only
inside the handler, so other subcommands stay fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llamarun.errors import LlamarunError

CALIBRATION_TOKENS = 2048  # what the GPTQ and SmoothQuant formats calibrate on: four 512-token windows


def register(subparsers: Any) -> None:
    from llamarun.eval.formats import DEFAULT_FORMATS, available_formats

    p = subparsers.add_parser(
        "eval", help="what weight formats cost in accuracy: perplexity, KL from a reference, top-1 agreement",
        description="Run a text through the model in each weight format (the first is the reference) and report "
                    "perplexity, the mean KL divergence per token from the reference, top-1 agreement with it, "
                    "and the bytes of the linear weights.")
    p.add_argument("model", help="model name (e.g. smollm2:135m) or a path to a checkpoint")
    p.add_argument("--text", type=Path, help="UTF-8 text file (default: the shipped Alice's Adventures in Wonderland)")
    p.add_argument("--formats", default=DEFAULT_FORMATS,
                   help=f"comma-separated formats, reference first (available: {', '.join(available_formats())}; "
                        f"default {DEFAULT_FORMATS}); a quantized one may add +head-exact, +head-int8 or "
                        "+head-fp8 to hold the output head apart, as run's --head does")
    p.add_argument("--ctx", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--stride", type=int, help="start a window every N tokens; the overlap is context only "
                                              "(default: --ctx, disjoint windows)")
    p.add_argument("--max-tokens", type=int, help="evaluate only the text's first N tokens")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from llamarun.eval.formats import needs_calibration, parse_formats
    from llamarun.eval.loader import format_loader
    from llamarun.eval.report import EvalReport, table
    from llamarun.eval.run import evaluate
    from llamarun.eval.text import DEFAULT_TEXT, read_text, text_tokens
    from llamarun.eval.windows import plan_windows
    from llamarun.loaders.registry import open_checkpoint
    from llamarun.store.home import llamarun_home
    from llamarun.store.resolve import resolve_model
    from llamarun.utils.progress import count_bar

    formats = parse_formats(args.formats)
    if args.json is not None and not args.json.parent.is_dir():  # found out now, not after an hour of forwards
        raise LlamarunError(f"cannot write '{args.json}': no folder '{args.json.parent}'", "choose a writable path")
    text_path = args.text or DEFAULT_TEXT
    text = read_text(text_path)
    resolved = resolve_model(args.model)
    ckpt = open_checkpoint(resolved.path, resolved.format)
    if args.ctx > ckpt.config.max_position_embeddings:
        raise LlamarunError(f"--ctx {args.ctx} is longer than the model's {ckpt.config.max_position_embeddings} "
                            "positions", "use a smaller --ctx")
    tokenizer = ckpt.tokenizer()
    ids = text_tokens(tokenizer, text, args.max_tokens)
    calibration: list[int] = []
    if needs_calibration(formats):  # GPTQ and SmoothQuant calibrate on the text after the evaluated part only
        calibration = text_tokens(tokenizer, text)[len(ids):len(ids) + CALIBRATION_TOKENS]
    windows = plan_windows(len(ids), args.ctx, args.stride)
    scratch = llamarun_home() / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    # No loading bar: rich draws one live display at a time, and the windows' bar is already up.
    load = format_loader(resolved, ctx=args.ctx, device=args.device, calibration=calibration)
    with count_bar("evaluating", len(windows) * len(formats), unit="windows") as bar:
        results = evaluate(ids, formats, windows, load, scratch=scratch, on_window=lambda _name: bar.advance())
    report = EvalReport(model=resolved.name, text=Path(text_path).name, text_tokens=len(ids), ctx=args.ctx,
                        stride=args.stride or args.ctx, windows=len(windows), device=results[0].device, results=results)
    print(table(report))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise LlamarunError(f"cannot write '{args.json}': {err.strerror}", "choose a writable path") from None
    return 0
