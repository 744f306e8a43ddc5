"""Entry point of the `llamarun` command.

Each subcommand lives in its own module with `register(subparsers)`; a module imports torch only
inside its handler, so `llamarun list` and `llamarun show` answer without loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from llamarun import __version__
from llamarun.cli.threads_flag import prepare_threads
from llamarun.errors import LlamarunError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamarun", description="Run Llama-family models locally.")
    parser.add_argument("--version", action="version", version=f"llamarun {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from llamarun.cli import (
        bench_cmd,
        create_cmd,
        embed_cmd,
        eval_cmd,
        quantize_cmd,
        run_cmd,
        serve_cmd,
        store_cmds,
        verify_cmd,
    )

    run_cmd.register(subparsers)
    embed_cmd.register(subparsers)
    bench_cmd.register(subparsers)
    eval_cmd.register(subparsers)
    serve_cmd.register(subparsers)
    quantize_cmd.register(subparsers)
    store_cmds.register(subparsers)
    create_cmd.register(subparsers)
    verify_cmd.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `run MODEL --seed 1 "prompt"`: argparse leaves words after options unparsed; they continue the prompt.
    args, extra = parser.parse_known_args(argv)
    if extra:
        words = {"run": "prompt", "embed": "texts"}.get(getattr(args, "command", None))
        if words is None or any(word.startswith("-") for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, words, [*getattr(args, words), *extra])
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        prepare_threads(args)  # before torch loads: the OpenMP wait policy is read then
        return int(args.handler(args) or 0)
    except LlamarunError as err:
        print(f"Error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_gone()
    finally:
        if "llamarun.engine.hub" in sys.modules:  # a thread left in torch at exit would abort the process
            sys.modules["llamarun.engine.hub"].close_default_hub()


def _stdout_gone() -> int:
    """The reader of our output left (`| head -c 5`): stop quietly, as `cat` does, with SIGPIPE's status."""
    # Point stdout at /dev/null so the flush at exit does not raise (and print) the same error again.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13  # 141, what a shell reports for a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
