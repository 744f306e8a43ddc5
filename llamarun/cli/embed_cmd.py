"""`llamarun embed MODEL TEXT...`: print one JSON array per text, its L2-normalized embedding.

Texts come from the arguments, or one per line from stdin when none are given. torch is imported
inside the handler only, so other subcommands stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llamarun.cli.weights_flags import add_weights_flags, weights_from_args
from llamarun.errors import LlamarunError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("embed", help="print embeddings of texts, one JSON array per line",
                              description="Embed each TEXT (mean-pooled final hidden states, unit length) and "
                                          "print one JSON array per line, in order.")
    p.add_argument("model", help="model name (e.g. smollm2:135m) or a path to a checkpoint")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed; without any, one per line from stdin")
    p.add_argument("--dimensions", type=int, help="keep the first N dimensions, then renormalize")
    p.add_argument("--no-truncate", dest="truncate", action="store_false",
                   help="fail on a text longer than the context instead of cutting it")
    p.add_argument("--ctx", "--num-ctx", dest="ctx", type=int, help="context length in tokens (default 4096)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    add_weights_flags(p)
    p.set_defaults(handler=embed)


def embed(args: argparse.Namespace) -> int:
    import torch

    from llamarun.api import LLM

    texts = list(args.texts)
    if not texts and not sys.stdin.isatty():
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise LlamarunError("nothing to embed", "give texts as arguments or one per line on stdin")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    llm = LLM(args.model, context_length=args.ctx, device=args.device, dtype=dtype, weights=weights_from_args(args),
              progress=sys.stderr.isatty())
    try:
        for vector in llm.embed(texts, truncate=args.truncate, dimensions=args.dimensions):
            print(json.dumps(vector))
    finally:
        llm.close()
    return 0
