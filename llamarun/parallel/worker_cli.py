"""What a CLI command does on a torchrun rank other than 0: load its shard, serve steps, exit.

Under torchrun every process runs the same command line. Rank 0 is the one that answers (prints, or
opens the HTTP port); the others must not bind a port or read a prompt, only load the same model with
the same settings (their engines must agree with rank 0's on the KV cache's block count) and serve
rank 0's steps until it stops them. No torch import until the load.
"""

from __future__ import annotations

import os

from llamarun.errors import LlamarunError


def is_worker_rank() -> bool:
    """True in a process torchrun (or another env:// launcher) started as a rank other than 0."""
    return "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0") != "0"


def check_torchrun_serve(model: str | None, keep_alive: str | None) -> None:
    """Under torchrun the other ranks serve one model for their whole life: `serve` must name it and keep it."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return
    if not model:
        raise LlamarunError("under torchrun, `llamarun serve` needs the MODEL to load on every rank",
                            "give it on the command line: llamarun serve MODEL --tp N --pp M")
    if keep_alive is not None:
        raise LlamarunError("under torchrun the served model stays loaded: its ranks cannot be started again",
                            "drop --keep-alive")


def serve_as_worker(model: str | None, *, context_length: int | None, device: str | None, weights: str) -> int:
    """Load `model` as this rank's shard and serve steps; exits with the rank's exit code."""
    from llamarun.llm.loading import load_model

    load_model(model, context_length=context_length, device=device, weights=weights)  # exits on a worker rank
    raise LlamarunError("this rank was given no share of the model", "check WORLD_SIZE against --tp x --pp")
