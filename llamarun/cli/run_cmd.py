"""`llamarun run MODEL [PROMPT]`: one-shot completion, or an interactive chat like `ollama run`.

torch is imported inside the handler only, so other subcommands stay fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llamarun.cli.guard_flags import add_guard_flags, attach_run_guards, guard_note, guard_settings
from llamarun.cli.run_tools import (
    add_tool_flags,
    ask_results,
    assistant_turn,
    forced_schema,
    load_tools,
    print_calls,
    read_json_file,
)
from llamarun.cli.threads_flag import add_threads_flag
from llamarun.cli.weights_flags import add_weights_flags, weights_from_args
from llamarun.errors import LlamarunError
from llamarun.parallel.layout import add_pp_argument, apply_pp_argument
from llamarun.parallel.settings import add_tp_argument, apply_tp_argument

HELP = """Commands:
  /set system <text>   set the system message (clears the conversation)
  /clear               forget the conversation so far
  /bye                 exit
  /?, /help            this help
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run a model on a prompt, or chat with it",
                              description="Run a model: one-shot with PROMPT, interactive chat without.")
    p.add_argument("model", help="model name (e.g. smollm2:135m) or a path to a checkpoint")
    p.add_argument("prompt", nargs="*", help="prompt; without it, an interactive chat starts")
    p.add_argument("--system", help="system message")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--verbose", action="store_true", help="print timings and token counts after the answer")
    p.add_argument("--ctx", "--num-ctx", dest="ctx", type=int, help="context length in tokens (default 4096)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    add_weights_flags(p)
    add_threads_flag(p)
    add_tp_argument(p)
    add_pp_argument(p)
    add_tool_flags(p)
    s = p.add_argument_group("sampling (defaults as in Ollama)")
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--min-p", type=float)
    s.add_argument("--repeat-penalty", type=float)
    s.add_argument("--repeat-last-n", type=int)
    s.add_argument("--presence-penalty", type=float)
    s.add_argument("--frequency-penalty", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--num-predict", "--max-tokens", dest="num_predict", type=int,
                   help="most tokens to generate (default: until the model stops or the context is full)")
    s.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    s.add_argument("--format", help="structured output: 'json' (any JSON object) or a JSON schema file (FILE.json)")
    add_guard_flags(p)
    p.set_defaults(handler=run)


def _flags(args: argparse.Namespace) -> dict:
    """The sampling flags given on the command line, by SamplingParams field."""
    given = {
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
        "repetition_penalty": args.repeat_penalty, "repeat_last_n": args.repeat_last_n,
        "presence_penalty": args.presence_penalty, "frequency_penalty": args.frequency_penalty,
        "seed": args.seed, "max_tokens": args.num_predict, "stop": tuple(args.stop) or None,
        "grammar": format_spec(args.format),
    }
    return {k: v for k, v in given.items() if v is not None}


def sampling_params(args: argparse.Namespace):
    from llamarun.sampling.params import SamplingParams

    return SamplingParams(**_flags(args))


def format_spec(value: str | None):
    """`--format`: "json", or the path of a file holding a JSON schema, as a GrammarSpec (None without it)."""
    from llamarun.llm.response_format import ollama_format

    if value is None or value == "json":
        return ollama_format(value)
    return ollama_format(read_json_file("--format", value, "give 'json' or the path of a JSON schema file"))


def run(args: argparse.Namespace) -> int:
    import torch

    from llamarun.api import LLM
    from llamarun.cli.verbose import load_phase_row, print_stats, weight_rows
    from llamarun.utils.devices import check_device

    params = sampling_params(args)  # validate flags and read the prompt before a long load
    guard_settings(args)
    args.tool_list = load_tools(args.tools)
    args.forced_call = forced_schema(args.tool_list, args.tool_choice)
    if args.tool_list and args.raw:
        raise LlamarunError("--tools needs the chat template", "leave out --raw")
    weights = weights_from_args(args)
    apply_tp_argument(args)
    apply_pp_argument(args)
    if args.ctx is not None and args.ctx < 1:
        raise LlamarunError(f"--ctx {args.ctx} is below 1", "give the context length in tokens, e.g. 4096")
    if args.device:
        check_device(args.device)  # before resolving (or pulling) the model
    prompt = _prompt(args)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    progress = sys.stderr is not None and sys.stderr.isatty()
    llm = LLM(args.model, context_length=args.ctx, device=args.device, dtype=dtype, weights=weights,
              progress=progress)
    guard_model = None
    try:
        guard_model = attach_run_guards(args, llm, progress)
        args.weight_rows = weight_rows(llm.engine.runner.model) if args.verbose else []
        if prompt:
            stream = _one_shot(llm, prompt, args, params)
            if args.verbose:
                print_stats(stream.stats, llm.device, llm.load_seconds,
                            [*args.weight_rows, load_phase_row(llm.load_phases)])
            return 0
        return _interactive(llm, args, params)
    finally:
        if guard_model is not None:
            guard_model.shutdown()
        llm.close()


def _prompt(args: argparse.Namespace) -> str:
    """The prompt from the command line, else from piped stdin; "" starts the chat (which needs a stdin)."""
    prompt = " ".join(args.prompt)
    if prompt:
        return prompt
    if sys.stdin is None or sys.stdin.closed:  # started with stdin closed (`<&-`): nothing to read or chat with
        raise LlamarunError("no prompt, and stdin is closed", "give the prompt as an argument")
    return "" if sys.stdin.isatty() else sys.stdin.read().strip()


def _request(llm, args: argparse.Namespace, params, system: str | None, turns: list, *, free: bool = False):
    """The chat service's request for this turn (a raw prompt with --raw); `free`: no forced tool call."""
    from llamarun.chat.messages import Message
    from llamarun.llm.chat_service import ChatRequest

    given = frozenset(_flags(args))  # a created model's parameters fill the rest
    if args.raw:
        return ChatRequest(llm.name, prompts=[turns[-1].content], params=params, given=given)
    tools = getattr(args, "tool_list", None) if getattr(args, "tool_choice", None) != "none" else None
    forced = None if free or not tools else args.forced_call
    return ChatRequest(llm.name, messages=([Message("system", system)] if system else []) + turns, params=params,
                       given=given, tools=tools, forced_call_schema=forced)


def _emit(stream) -> None:
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    if stream.text or not stream.tool_calls:
        sys.stdout.write("\n")
    print_calls(stream.tool_calls, sys.stdout)  # parsed, in place of the text the model wrote
    sys.stdout.flush()
    note = guard_note(stream.reply)
    if note:
        print(note, file=sys.stderr)


def _one_shot(llm, prompt: str, args: argparse.Namespace, params):
    from llamarun.chat.messages import Message

    stream = llm.stream(_request(llm, args, params, args.system, [Message("user", prompt)]))
    _emit(stream)
    return stream


def _interactive(llm, args: argparse.Namespace, params) -> int:
    from llamarun.chat.messages import Message
    from llamarun.cli.verbose import load_phase_row, print_stats

    system, turns, load = args.system, [], llm.load_seconds
    print("Type /? for help, /bye to exit.", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return 0
        if text in ("/?", "/help"):
            print(HELP, end="")
            continue
        if text == "/clear":
            turns = []  # the prefix cache may keep old blocks; they are simply never matched again
            print("Cleared conversation.")
            continue
        if text.startswith("/set system"):
            system = text.removeprefix("/set system").strip() or None
            turns = []
            print("Set system message." if system else "Cleared system message.")
            continue
        if text.startswith("/"):
            print(f"Unknown command '{text.split()[0]}'. Type /? for help.")
            continue
        turns.append(Message("user", line))
        asked = len(turns)
        stream = llm.stream(_request(llm, args, params, system, turns))
        try:
            _emit(stream)
            while stream.tool_calls:  # the user answers for the tools, the model goes on
                turns.append(assistant_turn(stream.text, stream.tool_calls))
                results = ask_results(stream.tool_calls, input)
                if results is None:
                    print()
                    return 0
                turns += results
                stream = llm.stream(_request(llm, args, params, system, turns, free=True))
                _emit(stream)
        except KeyboardInterrupt:
            stream.close()  # abort the request, or it would keep generating in later steps
            print()
            del turns[asked - 1:]
            continue
        turns.append(Message("assistant", stream.text))
        if args.verbose:
            # Like Ollama, the load is reported once, with the request that paid for it.
            phases = [load_phase_row(llm.load_phases)] if load else []
            print_stats(stream.stats, llm.device, load, [*args.weight_rows, *phases])
            load = 0.0
