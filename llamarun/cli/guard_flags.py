"""The safety flags `serve` and `run` share, and the GuardSettings they make (safety/settings.py)."""

from __future__ import annotations

import argparse
from typing import Any

from llamarun.errors import LlamarunError

MODES = "off|warn|block"


def add_guard_flags(parser: argparse.ArgumentParser) -> None:
    """Add the guard flags to `parser`, in a group of their own."""
    from llamarun.safety.settings import DEFAULT_HOLD_BACK, DEFAULT_PROMPT_GUARD, DEFAULT_STREAM_EVERY

    g = parser.add_argument_group("safety guards (Llama Guard 3, Prompt Guard, Code Shield, language policy)")
    g.add_argument("--guard", metavar="MODEL",
                   help="judge prompts and replies with a Llama Guard 3 model, e.g. llama-guard3:1b, llama-guard3:8b "
                        "or a path")
    g.add_argument("--guard-mode", metavar=MODES, help="what an unsafe Llama Guard verdict does (default block)")
    g.add_argument("--guard-exclude", metavar="S2,S7", help="Llama Guard categories not to check, comma-separated")
    g.add_argument("--prompt-guard", nargs="?", const=DEFAULT_PROMPT_GUARD, metavar="MODEL",
                   help=f"check prompts and tool results for injections and jailbreaks (default model "
                        f"{DEFAULT_PROMPT_GUARD})")
    g.add_argument("--prompt-guard-mode", metavar=MODES, help="what a Prompt Guard detection does (default block)")
    g.add_argument("--prompt-guard-threshold", type=float, metavar="P",
                   help="Prompt Guard score from which text counts as an attack (default 0.9)")
    g.add_argument("--code-shield", nargs="?", const="block", metavar=MODES,
                   help="scan code in replies and tool calls for insecure patterns (alone: block)")
    g.add_argument("--language-policy", metavar=MODES + "|auto",
                   help="prompts and replies outside the supported languages (default auto: warn when the "
                        "language detector is installed, else off)")
    g.add_argument("--languages", metavar="+ja,+zh",
                   help="languages the policy allows besides Llama 3.3's eight (+xx adds, -xx removes, a plain "
                        "list replaces them)")
    g.add_argument("--guard-stream-every", type=int, metavar="N",
                   help=f"check a streamed reply every N tokens (default {DEFAULT_STREAM_EVERY})")
    g.add_argument("--guard-hold-back", type=int, metavar="N",
                   help=f"checked tokens still held back from the client until the next check (default "
                        f"{DEFAULT_HOLD_BACK})")


def guard_settings(args: Any) -> Any:
    """The GuardSettings the flags ask for; bad values are LlamarunErrors naming the flag."""
    from llamarun.safety.settings import (
        DEFAULT_HOLD_BACK,
        DEFAULT_PROMPT_GUARD_THRESHOLD,
        DEFAULT_STREAM_EVERY,
        GuardMode,
        GuardSettings,
        parse_categories,
        parse_language_policy,
        parse_mode,
    )

    if args.guard_mode is not None and not args.guard:
        raise LlamarunError("--guard-mode is given without --guard", "add --guard llama-guard3:1b")
    if (args.prompt_guard_mode is not None or args.prompt_guard_threshold is not None) and not args.prompt_guard:
        raise LlamarunError("a --prompt-guard-* flag is given without --prompt-guard", "add --prompt-guard")
    for flag in ("guard", "prompt_guard"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise LlamarunError(f"--{flag.replace('_', '-')} is empty", "give a model name or path")
        if value is not None and " " in value.strip():  # `run m --prompt-guard "a prompt"` took the prompt
            raise LlamarunError(f"--{flag.replace('_', '-')} '{value[:40]}' looks like a prompt, not a model",
                                "put the prompt before the flag, or write --prompt-guard=MODEL")
    return GuardSettings(
        llama_guard=args.guard, llama_guard_mode=parse_mode(args.guard_mode, "--guard-mode", GuardMode.BLOCK),
        excluded_categories=parse_categories(args.guard_exclude),
        prompt_guard=args.prompt_guard,
        prompt_guard_mode=parse_mode(args.prompt_guard_mode, "--prompt-guard-mode", GuardMode.BLOCK),
        prompt_guard_threshold=(DEFAULT_PROMPT_GUARD_THRESHOLD if args.prompt_guard_threshold is None
                                else args.prompt_guard_threshold),
        code_shield=parse_mode(args.code_shield, "--code-shield", GuardMode.OFF),
        language_policy=parse_language_policy(args.language_policy), languages=args.languages,
        stream_every=DEFAULT_STREAM_EVERY if args.guard_stream_every is None else args.guard_stream_every,
        hold_back=DEFAULT_HOLD_BACK if args.guard_hold_back is None else args.guard_hold_back)


def attach_run_guards(args: Any, llm: Any, progress: bool = False) -> Any:
    """Put the guards the flags ask for on `llm`'s chat service (`llamarun run`); returns the guard model it
    loaded for Llama Guard (shut it down before `llm`), or None. The guard model is loaded now, before the
    prompt, on the same device and engine hub as `llm`."""
    from llamarun.safety.factory import build_pipeline
    from llamarun.safety.screening import RequestGuard

    settings = guard_settings(args)
    guard_model, source = None, None
    if settings.llama_guard:
        from llamarun.llm.async_llm import AsyncLLM
        from llamarun.llm.sync import SingleModel

        guard_model = AsyncLLM(settings.llama_guard, device=args.device, progress=progress)
        source = SingleModel(guard_model)
    pipeline = build_pipeline(settings, source=source)
    if pipeline:
        llm.service.guard = RequestGuard(pipeline)
    return guard_model


def guard_note(reply: Any) -> str | None:
    """One line for stderr about what the guards flagged in a `run` answer, or None."""
    report = getattr(reply, "guard", None)
    found = report.to_json() if report is not None else None
    if found is None:
        return None
    verdicts = "; ".join(f"{v['guard']} on the {v['kind']}: {', '.join(v['categories']) or 'unsafe'}"
                         for v in found["verdicts"])
    return f"[guard {'blocked' if found['action'] == 'block' else 'warning'}] {verdicts}"
