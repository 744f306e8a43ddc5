"""`llamarun serve [MODEL]`: the Ollama and OpenAI APIs on one port (11434, Ollama's, by default).

MODEL, when given, is pulled if needed and loaded before the port opens, and stays loaded (for
`--keep-alive` after its last use when that is given; a client's keep_alive never shortens it);
other models load on their first request and unload after their keep_alive. torch is imported only when
the first model loads.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from typing import Any

from llamarun.cli.guard_flags import add_guard_flags, guard_settings
from llamarun.cli.threads_flag import add_threads_flag
from llamarun.cli.weights_flags import add_weights_flags, weights_from_args
from llamarun.errors import LlamarunError
from llamarun.llm.request_limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_GENERATIONS,
    DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_MAX_QUEUE,
)
from llamarun.parallel.layout import add_pp_argument, apply_pp_argument, parallel_requested
from llamarun.parallel.settings import add_tp_argument, apply_tp_argument

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's 5 minutes, for models other than the served one
DEFAULT_DRAIN_SECONDS = 30.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: Any) -> None:
    """Add `serve` to the `llamarun` parser."""
    p = subparsers.add_parser("serve", help="serve the Ollama and OpenAI HTTP APIs",
                              description="Serve models over the Ollama API (/api/...) and the OpenAI API "
                                          "(/v1/...).")
    p.add_argument("model", nargs="?", help="a model to load at start-up and keep loaded (optional)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="a folder whose checkpoints clients may name by path (repeatable; default: none, only "
                        "store names and the MODEL given here)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--api-key", default=os.environ.get("LLAMARUN_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every request but /health "
                        "(default: $LLAMARUN_API_KEY, else no key)")
    p.add_argument("--origins", default=os.environ.get("LLAMARUN_ORIGINS"),
                   help="browser origins allowed to call the API besides localhost ones, comma-separated; "
                        "'*' wildcards, '*' alone for any (default: $LLAMARUN_ORIGINS, else localhost only)")
    p.add_argument("--ctx", "--num-ctx", dest="ctx", type=int,
                   help="context length in tokens for models loaded without num_ctx (default 4096)")
    p.add_argument("--keep-alive",
                   help="how long an idle model stays loaded: seconds or a duration like 5m, 1h; -1 forever "
                        "(default 5m; MODEL stays loaded for good unless this is given)")
    p.add_argument("--memory-budget", type=float, metavar="GB",
                   help="most memory for loaded models, in GB (default: the memory available at start)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_weights_flags(p)
    add_tp_argument(p)
    add_pp_argument(p)
    add_threads_flag(p)
    p.add_argument("--max-generations", type=int, default=DEFAULT_MAX_GENERATIONS, metavar="N",
                   help="most generations one request may start, prompts x n "
                        f"(default {DEFAULT_MAX_GENERATIONS})")
    p.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS, metavar="N",
                   help="most prompt tokens in one request, all prompts together "
                        f"(default {DEFAULT_MAX_PROMPT_TOKENS})")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                   help=f"largest request body in bytes; larger ones get 413 (default {DEFAULT_MAX_BODY_BYTES}, "
                        "8 MiB: room for a 128k-token prompt)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                   help="most generation and embedding requests waiting or running at once; more get 429 "
                        f"with Retry-After (default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--drain-seconds", type=float, default=DEFAULT_DRAIN_SECONDS, metavar="S",
                   help="on SIGTERM, refuse new requests (503) and let running ones finish for up to S seconds "
                        f"before exiting (default {DEFAULT_DRAIN_SECONDS:g})")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_guard_flags(p)
    p.set_defaults(handler=serve)


def check_args(args: argparse.Namespace) -> float:
    """Validate the flags before anything slow; return keep_alive in seconds."""
    from llamarun.server.errors import ApiError
    from llamarun.server.ollama_schemas import parse_keep_alive

    if not 0 <= args.port <= 65535:
        raise LlamarunError(f"--port {args.port} is not a port number", "use 1-65535")
    if args.ctx is not None and args.ctx < 1:
        raise LlamarunError(f"--ctx {args.ctx} is below 1", "give the context length in tokens, e.g. 4096")
    if args.memory_budget is not None and args.memory_budget <= 0:
        raise LlamarunError(f"--memory-budget {args.memory_budget} is not positive", "give it in GB, e.g. 16")
    if args.drain_seconds < 0:
        raise LlamarunError(f"--drain-seconds {args.drain_seconds:g} is negative", "give seconds, e.g. 30")
    for flag in ("max_generations", "max_prompt_tokens", "max_body_bytes", "max_queue"):
        if getattr(args, flag) < 1:
            name = "--" + flag.replace("_", "-")
            raise LlamarunError(f"{name} {getattr(args, flag)} is below 1", f"give {name} as a count, e.g. 64")
    if args.api_key is not None and not args.api_key.strip():
        raise LlamarunError("--api-key is empty", "give a key, or leave the flag out for no key")
    guard_settings(args)  # bad guard flags fail here, before anything loads
    if args.keep_alive is None:
        return DEFAULT_KEEP_ALIVE
    try:
        keep = parse_keep_alive(args.keep_alive)
    except ApiError as err:
        raise LlamarunError(err.message, "use seconds or a duration such as 5m or 1h") from None
    return DEFAULT_KEEP_ALIVE if keep is None else keep


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a LlamarunError saying why not (port taken, bad address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise LlamarunError(f"cannot resolve --host {host}: {err.strerror}",
                            "use an IP address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        taken = err.errno == errno.EADDRINUSE
        hint = ("another server (Ollama?) may be using it; pick another --port" if taken
                else "check --host and --port")
        raise LlamarunError(f"cannot listen on {host}:{port}: {err.strerror}", hint) from None
    return sock


def build_app(args: argparse.Namespace, keep_alive: float, loader: Any = None) -> Any:
    """The application `serve` runs (separate so tests can build it with a fake loader)."""
    from llamarun.llm.request_limits import RequestLimits
    from llamarun.safety.factory import build_pipeline
    from llamarun.server import ModelManager, create_app
    from llamarun.server.admission import Admission
    from llamarun.server.model_manager import FOREVER, default_loader
    from llamarun.server.origins import parse_origins
    from llamarun.utils.memory import available_memory

    budget = int(args.memory_budget * 1e9) if args.memory_budget else available_memory(args.device or "cpu")
    if parallel_requested() and not args.memory_budget:
        budget = None  # each rank holds a share, and checks it against its own device (parallel/rank_memory.py)
    manager = ModelManager(loader or default_loader(device=args.device, weights=weights_from_args(args)),
                           memory_budget=budget, keep_alive=keep_alive, context_length=args.ctx,
                           models_dirs=args.models_dir, one_at_a_time=parallel_requested())
    pinned_keep_alive = FOREVER if args.keep_alive is None else keep_alive  # the served model's
    # Llama Guard's model comes from the same manager, on the same engine hub, and stays loaded.
    guards = build_pipeline(guard_settings(args), source=manager, keep_alive=FOREVER)
    app = create_app(manager, api_key=args.api_key, preload=args.model, preload_keep_alive=pinned_keep_alive,
                     bind_host=args.host, origins=parse_origins(args.origins),
                     max_body_bytes=args.max_body_bytes, admission=Admission(args.max_queue), guards=guards)
    app.state.service.limits = RequestLimits(args.max_generations, args.max_prompt_tokens)
    return app


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    keep_alive = check_args(args)
    apply_tp_argument(args)
    apply_pp_argument(args)
    from llamarun.parallel.worker_cli import check_torchrun_serve, is_worker_rank, serve_as_worker

    check_torchrun_serve(args.model, args.keep_alive)
    if is_worker_rank():  # torchrun's other ranks: no port, only rank 0's steps on their shard
        return serve_as_worker(args.model, context_length=args.ctx, device=args.device,
                               weights=weights_from_args(args))
    from llamarun.store.health import clean_stale_tmp
    from llamarun.store.home import ModelStore

    clean_stale_tmp(ModelStore())  # what pulls killed earlier left behind
    if args.model:
        from llamarun.store.resolve import resolve_model

        args.model = resolve_model(args.model).name  # pulls it now, with progress, before the port opens
    guard_model = guard_settings(args).llama_guard
    if guard_model:
        from llamarun.store.resolve import resolve_model

        resolve_model(guard_model)  # a misspelt guard stops the start here; it loads once the server starts
    sock = bind(args.host, args.port)
    if args.host not in _LOOPBACK and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can "
              "use it", file=sys.stderr)
    app = build_app(args, keep_alive)
    if app.state.guards:
        names = ", ".join(f"{g['guard']} ({g['mode']})" for g in app.state.guards.describe())
        print(f"llamarun: safety guards: {names}", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"llamarun serving on http://{shown}:{sock.getsockname()[1]} "
          f"(Ollama API at /api, OpenAI API at /v1)", file=sys.stderr)
    # The drain below already waited for requests in flight; uvicorn's own grace only closes connections.
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    try:
        run_on_main_thread_engines(server, sock, app.state.admission, args.drain_seconds)
    finally:
        sock.close()
    print("llamarun server stopped", file=sys.stderr)
    return 0


def run_on_main_thread_engines(server: Any, sock: socket.socket, admission: Any = None,
                               drain_seconds: float = DEFAULT_DRAIN_SECONDS) -> None:
    """HTTP on a background thread, engines on the main one.

    PyTorch's OpenMP CPU kernels run 2-3x slower off the main thread, so the engines keep it
    (engine/hub.py) and uvicorn, which is mostly waiting on sockets, takes a thread of its own.
    SIGTERM drains (server/admission.py): new requests get 503, those in flight run on for up to
    `drain_seconds`, then uvicorn stops; the engines keep stepping meanwhile. A second SIGTERM, or
    Ctrl-C, asks uvicorn to stop at once.
    """
    import signal
    import threading

    from llamarun.engine.hub import default_hub

    hub = default_hub()

    def http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            hub.stop()

    def drain() -> None:
        if admission is not None:
            admission.start_draining()
            if not admission.wait_idle(drain_seconds):
                print(f"llamarun: {admission.in_flight} request(s) still running after {drain_seconds:g} s; "
                      "ending them", file=sys.stderr)
                admission.cut_streams()  # each stream gets a last error event, then its end
                admission.wait_idle(2.0)
        server.should_exit = True

    def terminate(*_: Any) -> None:
        if admission is None or admission.draining:
            raise KeyboardInterrupt
        print("llamarun: SIGTERM: draining (new requests get 503)", file=sys.stderr)
        threading.Thread(target=drain, name="llamarun-drain", daemon=True).start()

    previous = signal.signal(signal.SIGTERM, terminate)
    thread = threading.Thread(target=http, name="llamarun-http", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            try:
                hub.run_forever()
                break
            except KeyboardInterrupt:
                server.should_exit = True  # keep driving engines while uvicorn drains
    finally:
        signal.signal(signal.SIGTERM, previous)
        thread.join(timeout=10)
