"""`llamarun bench`: offline throughput of the batched engine, or latency of a server under concurrency.

    llamarun bench MODEL [--offline] --requests 32 --concurrency 1,8,32 --prompt-tokens 128 --output-tokens 64
    llamarun bench [MODEL] --url http://127.0.0.1:11434 --concurrency 1,8,32
    llamarun bench MODEL --serve --concurrency 1,8

torch is imported inside the handler only (and not at all when benchmarking a remote server).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from llamarun.errors import LlamarunError

DEFAULT_CONTEXT = 4096  # as llamarun.llm.loading (not imported here: it imports torch)


def register(subparsers: Any) -> None:
    """Add `bench` to the `llamarun` parser."""
    p = subparsers.add_parser(
        "bench", help="measure throughput (offline) or latency under concurrency (against a server)",
        description="Offline (default): drive the batched engine directly. --url: stream from a running "
                    "server's OpenAI endpoint. --serve: start the server in this process and bench it.")
    p.add_argument("model", nargs="?",
                   help="model name or path (with --url, default: the server's first model)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true", help="drive the engine directly (the default)")
    mode.add_argument("--url", help="base URL of a running llamarun (or any OpenAI-compatible) server")
    mode.add_argument("--serve", action="store_true", help="start `llamarun serve` in-process on a free port")
    p.add_argument("--concurrency", default="1",
                   help="requests in flight; a comma list runs each level (1,8,32)")
    p.add_argument("--requests", type=int, help="requests per level (default: 2 x concurrency, at least 8)")
    p.add_argument("--prompt-tokens", type=int, default=128,
                   help="prompt length (serving: words, about 1 token each)")
    p.add_argument("--output-tokens", type=int, default=64, help="tokens to generate per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write a JSON record to PATH")
    p.add_argument("--api-key", help="Bearer key for the server (--url)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one HTTP request may take")
    m = p.add_argument_group("model loading (offline and --serve)")
    m.add_argument("--ctx", type=int, help="context length in tokens (default 4096)")
    m.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    m.add_argument("--weights", choices=["auto", "exact", "int8"], default="auto",
                   help="as in `llamarun run`")
    p.set_defaults(handler=run)


def parse_levels(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; anything else is a user error."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or any(c < 1 for c in levels):
        raise LlamarunError(f"bad --concurrency '{text}'",
                            "give positive integers separated by commas, e.g. 1,8,32")
    return levels


def requests_for(args: argparse.Namespace, concurrency: int) -> int:
    return args.requests if args.requests is not None else max(8, 2 * concurrency)


def run(args: argparse.Namespace) -> int:
    from llamarun.bench.offline import check_settings
    from llamarun.bench.report import build_record, format_table, write_record

    levels = parse_levels(args.concurrency)
    for c in levels:
        check_settings(requests=requests_for(args, c), concurrency=c, prompt_tokens=args.prompt_tokens,
                       output_tokens=args.output_tokens, context_length=args.ctx)
    if args.timeout <= 0:
        raise LlamarunError(f"--timeout must be positive, got {args.timeout}", "give seconds, e.g. 600")
    if args.url or args.serve:
        mode, model, results, extra = "serving", *_serving(args, levels)
    else:
        mode, model, results, extra = "offline", *_offline(args, levels)
    print(f"{mode} benchmark of {model}: {args.prompt_tokens} prompt / {args.output_tokens} output tokens")
    print(format_table(results))
    if args.json_path:
        settings = {"prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                    "seed": args.seed, "concurrency": levels,
                    "requests": [requests_for(args, c) for c in levels], **extra}
        path = write_record(args.json_path, build_record(model, mode, settings, results))
        print(f"record written to {path}")
    return 0


def _offline(args: argparse.Namespace, levels: list[int]) -> tuple[str, list, dict]:
    from llamarun.bench.offline import check_settings, run_offline, warm_up
    from llamarun.llm.loading import load_model
    from llamarun.store.catalog import DEFAULT_MODEL

    name = args.model or DEFAULT_MODEL
    ctx = args.ctx or DEFAULT_CONTEXT
    # Room for every in-flight request at once, so the benchmark measures batching, not preemption.
    needed = max(levels) * (args.prompt_tokens + args.output_tokens + 16)
    lm = load_model(name, context_length=args.ctx, device=args.device, weights=args.weights,
                    kv_tokens=max(needed, 4 * ctx), progress=True)
    check_settings(requests=1, concurrency=1, prompt_tokens=args.prompt_tokens,
                   output_tokens=args.output_tokens, context_length=lm.context_length)
    vocab = lm.config.vocab_size
    warm_up(lm.engine, vocab)
    results = [run_offline(lm.engine, vocab_size=vocab, requests=requests_for(args, c), concurrency=c,
                           prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                           seed=args.seed + i)
               for i, c in enumerate(levels)]
    extra = {"device": lm.device, "dtype": str(lm.dtype).removeprefix("torch."), "weights": lm.weights,
             "context_length": lm.context_length, "load_seconds": round(lm.load_seconds, 3)}
    return lm.name, results, extra


def _serving(args: argparse.Namespace, levels: list[int]) -> tuple[str, list, dict]:
    if args.serve:
        return _serve_and_bench(args, levels)
    url = args.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LlamarunError(f"bad --url '{args.url}'", "give a base URL such as http://127.0.0.1:11434")
    model, results = asyncio.run(_serving_levels(args, url, levels))
    return model, results, {"url": url}


async def _serving_levels(args: argparse.Namespace, url: str, levels: list[int]) -> tuple[str, list]:
    from llamarun.bench import serving

    model = args.model or await serving.first_model(url, args.api_key)
    await serving.warm_up(url, model, args.api_key, args.timeout)
    results = []
    for i, c in enumerate(levels):
        results.append(await serving.run_level(
            url, model, concurrency=c, requests=requests_for(args, c), prompt_tokens=args.prompt_tokens,
            output_tokens=args.output_tokens, seed=args.seed + i, api_key=args.api_key, timeout=args.timeout))
    if all(r.requests == 0 for r in results):
        errors = sorted({e for r in results for e in r.extra.get("errors", [])})
        raise LlamarunError(f"every request failed: {'; '.join(errors[:3])}", "check the server's log")
    return model, results


def _serve_and_bench(args: argparse.Namespace, levels: list[int]) -> tuple[str, list, dict]:
    """Start the real server in-process and bench it, arranged as `llamarun serve` arranges threads.

    The engines run on this (the main) thread through an EngineHub of the benchmark's own, because
    PyTorch's OpenMP kernels run 2-3x slower off it (llm/engine_hub.py); uvicorn and the benchmark's
    HTTP clients each take a thread of their own.
    """
    import threading

    from llamarun.bench import serving
    from llamarun.llm.engine_hub import EngineHub
    from llamarun.store.catalog import DEFAULT_MODEL
    from llamarun.store.resolve import resolve_model

    args.model = resolve_model(args.model or DEFAULT_MODEL).name  # a bad name fails here, clearly
    hub = EngineHub()
    app = _server_app(args, hub)
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            with serving.serve_in_thread(app, startup_timeout=args.timeout) as url:
                outcome["result"] = asyncio.run(_serving_levels(args, url, levels))
        except BaseException as err:
            outcome["error"] = err
        finally:
            hub.stop()  # after the server's shutdown has queued its last engine calls

    thread = threading.Thread(target=client, name="llamarun-bench-client", daemon=True)
    thread.start()
    hub.run_forever()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    model, results = outcome["result"]
    return model, results, {"url": "in-process", "weights": args.weights}


def _server_app(args: argparse.Namespace, hub: Any) -> Any:
    """The real server app with `args.model` preloaded and kept, sized for the largest level."""
    from llamarun.server.app import create_app
    from llamarun.server.model_manager import FOREVER, ModelManager

    needed = max(parse_levels(args.concurrency)) * (2 * args.prompt_tokens + args.output_tokens + 64)
    kv_tokens = max(needed, 4 * (args.ctx or DEFAULT_CONTEXT))

    def load(name: str, context_length: int | None) -> Any:
        from llamarun.llm.async_llm import AsyncLLM

        return AsyncLLM(name, context_length=context_length, device=args.device, weights=args.weights,
                        max_kv_tokens=kv_tokens, hub=hub)

    manager = ModelManager(load, context_length=args.ctx, keep_alive=FOREVER)
    return create_app(manager, preload=args.model)
