"""`--threads N` for the commands that compute on the CPU (run, serve, bench); see utils/threads.py."""

from __future__ import annotations

from typing import Any


def add_threads_flag(parser: Any) -> None:
    """Add `--threads` to a parser or argument group (`main` applies it before torch loads)."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads to compute with (default: the cores free at start, found from "
                             "the affinity mask and a short sample of /proc/stat)")


def prepare_threads(args: Any) -> None:
    """Choose and apply the thread count for a command that has `--threads` (others are left alone)."""
    if hasattr(args, "threads"):
        from llamarun.utils.threads import prepare

        prepare(args.threads)
