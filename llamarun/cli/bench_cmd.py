"""`llamarun bench`: offline throughput of the batched engine, or latency of a server under concurrency.

    llamarun bench MODEL [--offline] --requests 32 --concurrency 1,8,32 --prompt-tokens 128 --output-tokens 64
    llamarun bench --random-weights llama3.1-8b --concurrency 1,8 --requests 1,8 [--time-budget 120]
    llamarun bench [MODEL] --url http://127.0.0.1:11434 --concurrency 1,8,32
    llamarun bench MODEL --serve --concurrency 1,8

torch is imported inside the handler only (and not at all when benchmarking a remote server).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from llamarun.cli.threads_flag import add_threads_flag
from llamarun.cli.weights_flags import add_weights_flags, weights_from_args
from llamarun.errors import LlamarunError
from llamarun.parallel.layout import add_pp_argument, apply_pp_argument
from llamarun.parallel.settings import add_tp_argument, apply_tp_argument

if TYPE_CHECKING:
    from llamarun.bench.report import RunRecord

DEFAULT_CONTEXT = 4096  # as llamarun.llm.loading (not imported here: it imports torch)


def register(subparsers: Any) -> None:
    """Add `bench` to the `llamarun` parser."""
    p = subparsers.add_parser(
        "bench", help="measure throughput (offline) or latency under concurrency (against a server)",
        description="Offline (default): drive the batched engine directly. --url: stream from a running "
                    "server's OpenAI endpoint. --serve: start the server in this process and bench it.")
    p.add_argument("model", nargs="?",
                   help="model name or path (with --url, default: the server's first model; not with "
                        "--random-weights)")
    p.add_argument("--random-weights", metavar="SHAPE",
                   help="bench a model of this shape with random weights built on the device, no checkpoint: "
                        "llama3.1-8b, llama3.3-70b or tiny (offline only)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true", help="drive the engine directly (the default)")
    mode.add_argument("--url", help="base URL of a running llamarun (or any OpenAI-compatible) server")
    mode.add_argument("--serve", action="store_true", help="start `llamarun serve` in-process on a free port")
    p.add_argument("--concurrency", default="1",
                   help="requests in flight; a comma list runs each level (1,8,32)")
    p.add_argument("--requests", help="requests per level, or a comma list with one count per level "
                                       "(default: 2 x concurrency, at least 8)")
    p.add_argument("--prompt-tokens", type=int, default=128,
                   help="prompt length (serving: words, about 1 token each)")
    p.add_argument("--output-tokens", type=int, default=64, help="tokens to generate per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic prompts (and of --random-weights)")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write a JSON record to PATH")
    p.add_argument("--api-key", help="Bearer key for the server (--url)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one HTTP request may take")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="offline: skip levels estimated not to finish within this many seconds of the start, "
                        "and cut short one that overruns")
    p.add_argument("--warm-runs", type=int, metavar="N",
                   help="offline: untimed runs of each level before the timed one (default: 1 on a GPU, where "
                        "a first run compiles kernels for its batch shapes; 0 on a CPU)")
    p.add_argument("--copy-bandwidth", type=float, metavar="GB/S",
                   help="--random-weights: the device's copy bandwidth (read + write) to rate decoding "
                        "against (default: measured once on CUDA, none on CPU)")
    m = p.add_argument_group("model loading (offline and --serve)")
    m.add_argument("--ctx", type=int, help="context length in tokens (default 4096)")
    m.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    add_weights_flags(m)
    add_threads_flag(m)
    add_tp_argument(m)
    add_pp_argument(m)
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


def parse_requests(text: str | None, levels: list[int]) -> list[int]:
    """Requests per level: one count for all, a comma list with one per level, or the default."""
    if text is None:
        return [max(8, 2 * c) for c in levels]
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts:
        raise LlamarunError(f"bad --requests '{text}'", "give a count, or one count per level: 1,8,64")
    if len(counts) == 1:
        return counts * len(levels)
    if len(counts) != len(levels):
        raise LlamarunError(f"--requests has {len(counts)} counts for {len(levels)} concurrency levels",
                            "give one count for all levels, or one per level")
    return counts


def _check_args(args: argparse.Namespace, levels: list[int], counts: list[int]) -> None:
    """Every bad setting, as one clear error, before any model is loaded."""
    from llamarun.bench.offline import check_settings

    for c, n in zip(levels, counts, strict=True):
        check_settings(requests=n, concurrency=c, prompt_tokens=args.prompt_tokens,
                       output_tokens=args.output_tokens, context_length=args.ctx)
    for name, value in (("--timeout", args.timeout), ("--time-budget", args.time_budget),
                        ("--copy-bandwidth", args.copy_bandwidth)):
        if value is not None and not value > 0:  # `not >` also catches NaN
            raise LlamarunError(f"{name} must be positive, got {value}", f"give a positive {name}")
    if args.warm_runs is not None and args.warm_runs < 0:
        raise LlamarunError(f"--warm-runs must be 0 or more, got {args.warm_runs}", "give 0, 1 or more")
    if args.warm_runs and (args.url or args.serve):
        raise LlamarunError("--warm-runs applies to offline runs", "drop it with --url/--serve")
    weights = weights_from_args(args)  # --group-size without int4 fails here
    if args.random_weights is None:
        return
    if args.model:
        raise LlamarunError(f"both a MODEL ('{args.model}') and --random-weights given",
                            "give one: a model to load, or a shape to build with random weights")
    if args.url or args.serve:
        raise LlamarunError("--random-weights benches the engine in this process, not a server",
                            "drop --url/--serve")
    if (args.pp or 1) > 1:
        raise LlamarunError("--random-weights builds tensor-parallel shards only", "drop --pp, or bench a checkpoint")
    if weights == "exact":
        raise LlamarunError("--weights exact applies to checkpoints",
                            "random weights are held in the compute dtype unless quantized; drop --weights")


def run(args: argparse.Namespace) -> int:
    from llamarun.bench.report import RunRecord, format_table

    start = time.perf_counter()
    levels = parse_levels(args.concurrency)
    counts = parse_requests(args.requests, levels)
    _check_args(args, levels, counts)
    apply_tp_argument(args)
    apply_pp_argument(args)
    deadline = start + args.time_budget if args.time_budget else None
    record = RunRecord(args.json_path, model=args.model or "", settings={
        "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens, "seed": args.seed,
        "concurrency": levels, "requests": counts, "tp": args.tp or 1})
    if args.url or args.serve:
        record.mode = "serving"
        record.model, results, settings = _serving(args, levels, counts)
        record.settings.update(settings)
    elif args.random_weights:
        results = _offline_random(args, levels, counts, deadline, record)
    else:
        results = _offline(args, levels, counts, deadline, record)
    what = f"{record.model} (random weights)" if args.random_weights else record.model
    print(f"{record.mode} benchmark of {what}: {args.prompt_tokens} prompt / {args.output_tokens} output tokens")
    print(format_table(results))
    for line in record.notes:
        print(line)
    if args.json_path:
        print(f"record written to {record.write(results, complete=True)}")
    return 0


def warm_runs_for(args: argparse.Namespace, device: str) -> int:
    """--warm-runs, or its default: one on a GPU (a first run there compiles kernels), none on a CPU."""
    if args.warm_runs is not None:
        return args.warm_runs
    return 1 if str(device).startswith("cuda") else 0


def _offline(args: argparse.Namespace, levels: list[int], counts: list[int], deadline: float | None,
             record: RunRecord) -> list:
    from llamarun.bench.offline import check_settings, run_levels, warm_up
    from llamarun.llm.loading import load_model
    from llamarun.store.catalog import DEFAULT_MODEL

    name = args.model or DEFAULT_MODEL
    ctx = args.ctx or DEFAULT_CONTEXT
    # Room for every in-flight request at once, so the benchmark measures batching, not preemption.
    needed = max(levels) * (args.prompt_tokens + args.output_tokens + 16)
    lm = load_model(name, context_length=args.ctx, device=args.device, weights=weights_from_args(args),
                    kv_tokens=max(needed, 4 * ctx), progress=True)
    check_settings(requests=1, concurrency=1, prompt_tokens=args.prompt_tokens,
                   output_tokens=args.output_tokens, context_length=lm.context_length)
    record.model = lm.name
    record.settings.update(device=lm.device, dtype=str(lm.dtype).removeprefix("torch."), weights=lm.weights,
                           context_length=lm.context_length, load_seconds=round(lm.load_seconds, 3))
    record.describe_machine()
    vocab = lm.config.vocab_size
    warm_up(lm.engine, vocab)
    warm_runs = warm_runs_for(args, lm.device)
    record.settings.update(warm_runs=warm_runs)
    results, skipped = run_levels(lm.engine, vocab_size=vocab, levels=levels, requests=counts,
                                  prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                                  seed=args.seed, deadline=deadline, warm_runs=warm_runs,
                                  on_level=lambda done, _skipped: record.write(done, complete=False))
    if skipped:
        record.top["skipped_levels"] = skipped
    return results


def _offline_random(args: argparse.Namespace, levels: list[int], counts: list[int], deadline: float | None,
                    record: RunRecord) -> list:
    """A model of a named shape with random weights: build on the device, bench, rate against bandwidth."""
    from llamarun.bench.bandwidth import annotate_levels, decode_weight_bytes, measure_copy_bandwidth
    from llamarun.bench.offline import run_levels, warm_up
    from llamarun.bench.random_weights import WEIGHT_STD, load_random_model, preset_config
    from llamarun.quant.footprint import decode_bytes, describe_footprint, model_footprint
    from llamarun.utils.devices import check_device, default_device

    config = preset_config(args.random_weights)
    device = check_device(args.device or default_device())
    if args.copy_bandwidth:
        copy, source = args.copy_bandwidth * 1e9, "given"
    elif device.startswith("cuda"):  # measured before the model takes the memory
        copy, source = measure_copy_bandwidth(device), "measured"
    else:
        copy, source = None, None
    # A context just long enough for the benchmark's requests, unless asked: the cache holds one per request.
    ctx = args.ctx or max(16, -(-(args.prompt_tokens + args.output_tokens) // 16) * 16)
    rm = load_random_model(args.random_weights, device=device, concurrency=max(levels), context_length=ctx,
                           seed=args.seed, weights=weights_from_args(args))
    element = rm.dtype.itemsize
    if copy and rm.ranks > 1:  # tensor parallelism reads every rank's shard at once: the limit is the sum
        copy *= rm.ranks
        source = f"{source} per GPU x {rm.ranks} GPUs"
    dtype = str(rm.dtype).removeprefix("torch.")
    footprint = model_footprint(rm.engine.runner.model)
    step_weights = None if rm.weights == "exact" else decode_bytes(footprint) * rm.ranks  # rank 0's shard x ranks
    record.model = args.random_weights
    record.settings.update(device=rm.device, dtype=dtype, weights="random", quantization=rm.weights,
                           context_length=ctx,
                           kv_tokens=rm.engine.config.kv_tokens, max_running=rm.engine.config.max_running,
                           load_seconds=round(rm.load_seconds, 3), time_budget=args.time_budget,
                           graph_capture_seconds=round(getattr(rm.engine.runner, "capture_seconds", 0.0), 3))
    record.describe_machine()
    record.top["weights"] = "random"
    record.top["random_weights"] = {"shape": args.random_weights, "std": WEIGHT_STD, "seed": args.seed,
                                    "parameters": config.num_parameters, "weight_bytes": rm.weight_bytes,
                                    "decode_weight_bytes": step_weights or decode_weight_bytes(config, element),
                                    "format": rm.weights, "layer_groups": [vars(g) for g in footprint]}
    record.top["bandwidth"] = {"copy_gb_s": round(copy / 1e9, 1) if copy else None, "source": source}
    print(f"built {args.random_weights} with random weights (N(0, {WEIGHT_STD})): "
          f"{config.num_parameters / 1e9:.3g} B parameters, {dtype} ({rm.weights}) on {rm.device}, "
          f"{rm.load_seconds:.1f} s "
          f"(CUDA graph capture {getattr(rm.engine.runner, 'capture_seconds', 0.0):.1f} s of it)", flush=True)

    def saved(done: list, skipped: list) -> None:
        annotate_levels(done, config, element, prompt_tokens=args.prompt_tokens,
                        output_tokens=args.output_tokens, copy_bytes_per_s=copy, weight_bytes=step_weights)
        record.top["skipped_levels"] = skipped
        record.write(done, complete=False)

    warm_up(rm.engine, config.vocab_size, prompt_tokens=args.prompt_tokens)
    warm_runs = warm_runs_for(args, rm.device)
    record.settings.update(warm_runs=warm_runs)
    results, skipped = run_levels(rm.engine, vocab_size=config.vocab_size, levels=levels, requests=counts,
                                  prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens,
                                  seed=args.seed, deadline=deadline, on_level=saved, warm_runs=warm_runs)
    saved(results, skipped)
    record.notes.append(f"weights: random, {args.random_weights} shape, {dtype} on {rm.device}")
    record.notes += describe_footprint(footprint)
    for lv in results:
        fraction = lv.extra["decode_bw_fraction"]
        if fraction is not None:
            record.notes.append(
                f"concurrency {lv.concurrency}: decode reads {lv.extra['decode_bytes_per_step'] / 1e9:.3g} GB "
                f"a step = {100 * fraction:.3g}% of the {copy / 1e9:.4g} GB/s copy bandwidth ({source})")
    record.notes += [f"concurrency {s['concurrency']}: skipped (time budget)" for s in skipped]
    return results


def _serving(args: argparse.Namespace, levels: list[int], counts: list[int]) -> tuple[str, list, dict]:
    if args.serve:
        return _serve_and_bench(args, levels, counts)
    url = args.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LlamarunError(f"bad --url '{args.url}'", "give a base URL such as http://127.0.0.1:11434")
    model, results = asyncio.run(_serving_levels(args, url, levels, counts))
    return model, results, {"url": url}


async def _serving_levels(args: argparse.Namespace, url: str, levels: list[int],
                          counts: list[int]) -> tuple[str, list]:
    from llamarun.bench import serving

    model = args.model or await serving.first_model(url, args.api_key)
    await serving.warm_up(url, model, args.api_key, args.timeout)
    results = []
    for i, (c, n) in enumerate(zip(levels, counts, strict=True)):
        results.append(await serving.run_level(
            url, model, concurrency=c, requests=n, prompt_tokens=args.prompt_tokens,
            output_tokens=args.output_tokens, seed=args.seed + i, api_key=args.api_key, timeout=args.timeout))
    if all(r.requests == 0 for r in results):
        errors = sorted({e for r in results for e in r.extra.get("errors", [])})
        raise LlamarunError(f"every request failed: {'; '.join(errors[:3])}", "check the server's log")
    return model, results


def _serve_and_bench(args: argparse.Namespace, levels: list[int], counts: list[int]) -> tuple[str, list, dict]:
    """Start the real server in-process and bench it, arranged as `llamarun serve` arranges threads.

    The engines run on this (the main) thread through an EngineHub of the benchmark's own, because
    PyTorch's OpenMP kernels run 2-3x slower off it (engine/hub.py); uvicorn and the benchmark's
    HTTP clients each take a thread of their own.
    """
    import threading

    from llamarun.bench import serving
    from llamarun.engine.hub import EngineHub
    from llamarun.store.catalog import DEFAULT_MODEL
    from llamarun.store.resolve import resolve_model

    args.model = resolve_model(args.model or DEFAULT_MODEL).name  # a bad name fails here, clearly
    hub = EngineHub()
    app = _server_app(args, hub)
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            with serving.serve_in_thread(app, startup_timeout=args.timeout) as url:
                outcome["result"] = asyncio.run(_serving_levels(args, url, levels, counts))
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
    return model, results, {"url": "in-process", "weights": weights_from_args(args)}


def _server_app(args: argparse.Namespace, hub: Any) -> Any:
    """The real server app with `args.model` preloaded and kept, sized for the largest level."""
    from llamarun.server.app import create_app
    from llamarun.server.model_manager import FOREVER, ModelManager

    needed = max(parse_levels(args.concurrency)) * (2 * args.prompt_tokens + args.output_tokens + 64)
    kv_tokens = max(needed, 4 * (args.ctx or DEFAULT_CONTEXT))

    def load(name: str, context_length: int | None) -> Any:
        from llamarun.llm.async_llm import AsyncLLM

        return AsyncLLM(name, context_length=context_length, device=args.device, weights=weights_from_args(args),
                        max_kv_tokens=kv_tokens, hub=hub)

    manager = ModelManager(load, context_length=args.ctx, keep_alive=FOREVER)
    return create_app(manager, preload=args.model)
