"""Start tp x pp ranks (pipeline stages, each a tensor-parallel group) and hand rank 0 a ready engine.

With one stage this is launch.py's `start_tensor_parallel`. With more, the same protocol: rank 0 (stage
0, tp rank 0) keeps the scheduler and broadcasts each plain-data step to every rank; ranks 1..N-1 are
spawned here (one host), or started by torchrun on any number of hosts (RANK / WORLD_SIZE set), in
which case every process calls `start_parallel` and only rank 0 returns. Each rank reads its stage's
tensors (its tp slices of them) and builds an engine whose KV cache holds its own layers and KV heads.
The stages use the torch runner (no CUDA graphs across stages yet).

`load_engine_over_ranks` is the hook llm/loading.py calls: it checks each rank's memory plan first,
and remembers the handle so `close_parallel(engine)` can stop the ranks when a server unloads the model.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch

from llamarun.config import ModelConfig
from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.errors import LlamarunError
from llamarun.parallel.group import ParallelGroup, close_group, init_group, torchrun_env
from llamarun.parallel.launch import (
    _STARTED,
    ShardSpec,
    TensorParallel,
    _check_all_built,
    _kill,
    spawn_ranks,
    start_tensor_parallel,
)
from llamarun.parallel.layout import Layout, parallel_layout
from llamarun.parallel.runner import BroadcastRunner, serve_steps
from llamarun.parallel.stage_groups import StageTPGroup, stage_tp_group

_OPEN: dict[int, TensorParallel] = {}  # id(engine) -> the handle that stops its ranks


def start_parallel(spec: ShardSpec, layout: Layout, on_tensor: Callable[[str], None] | None = None
                   ) -> TensorParallel:
    """Rank 0's engine over `layout`'s ranks (spawned here, or already started by torchrun).

    Under torchrun, ranks other than 0 never return: they serve steps, then exit the process.
    """
    if layout.pp == 1:
        return start_tensor_parallel(spec, layout.tp, on_tensor)
    check_layout(spec, layout)  # a split the model cannot take fails here, before any process starts
    import torch.distributed as dist

    if dist.is_initialized():
        raise LlamarunError("a parallel model is already running in this process",
                            "close it before loading another with --tp/--pp")
    env = torchrun_env()
    if env is not None:
        rank, world, local_rank = env
        if world != layout.world_size:
            raise LlamarunError(f"torchrun started {world} ranks, but --tp {layout.tp} x --pp {layout.pp} "
                                f"needs {layout.world_size}", "start nnodes x nproc-per-node = tp x pp ranks")
        if rank != 0:
            sys.exit(_stage_worker(rank, layout, None, spec, local_rank))
        group = init_group(0, world, spec.device, local_rank=local_rank, timeout_s=spec.timeout_s,
                           start_timeout_s=spec.start_timeout_s)
        return _rank_zero(spec, layout, group, [], on_tensor)
    group, processes = spawn_ranks(spec, layout.world_size, _spawned_stage_worker,
                                   lambda rank, port: (rank, layout, port, spec), "llamarun-rank")
    return _rank_zero(spec, layout, group, processes, on_tensor)


def check_layout(spec: ShardSpec, layout: Layout) -> None:
    """Refuse a tp the heads cannot split or more stages than layers (LlamarunError), reading only headers."""
    from llamarun.loaders.registry import open_checkpoint
    from llamarun.parallel.plan import ShardPlan
    from llamarun.parallel.stage_plan import StagePlan

    config = open_checkpoint(spec.path, spec.format).config
    ShardPlan(config, 0, layout.tp)
    StagePlan(config, 0, layout.pp)


def load_engine_over_ranks(path: Any, fmt: str, config: EngineConfig, dtype: torch.dtype, device: str,
                           weights: str, model_config: ModelConfig,
                           on_tensor: Callable[[str], None] | None = None) -> LLMEngine:
    """What llm/loading.py calls when --tp/--pp (or torchrun) ask for several ranks: rank 0's engine."""
    from llamarun.parallel.rank_memory import check_rank_fits, rank_device
    from llamarun.utils.memory import available_memory

    layout = parallel_layout()
    element = torch.finfo(dtype).bits // 8
    env = torchrun_env()
    if env is not None:  # each process checks its own rank, on its own device
        rank, _, local_rank = env
        sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        checks = [(rank, rank_device(device, layout, rank, local_rank), None)]
    else:  # rank 0 checks for all: the GPUs of one host are alike (asking each would wake them all from here)
        sharing = layout.world_size
        free = available_memory(device)
        free = None if free is None else (free if device.startswith("cuda") else free // sharing)
        checks = [(rank, device, free) for rank in range(layout.world_size)]
    for rank, rank_dev, free in checks:
        check_rank_fits(model_config, layout, rank, mode=weights, element=element, kv_tokens=config.kv_tokens,
                        device=rank_dev, ranks_sharing_device=sharing, available_bytes=free)
    spec = ShardSpec(str(path), fmt, config, str(dtype).removeprefix("torch."), device, weights)
    handle = start_parallel(spec, layout, on_tensor)
    _OPEN[id(handle.engine)] = handle
    return handle.engine


def close_parallel(engine: Any) -> None:
    """Stop the ranks behind `engine` if it is a parallel one (a server unloading it); otherwise nothing."""
    handle = _OPEN.pop(id(engine), None)
    if handle is not None:
        stop_parallel(handle)


def stop_parallel(handle: TensorParallel) -> None:
    """`handle.close()`, but the spawned ranks of a broken group are killed at once rather than waited for:
    it cannot tell them to stop, and the survivors may wait on the dead rank until their timeouts."""
    if getattr(handle.engine.runner, "failure", None) is not None:
        _kill(handle.processes)
    handle.close()


def _rank_zero(spec: ShardSpec, layout: Layout, group: ParallelGroup, processes: list[Any],
               on_tensor: Callable[[str], None] | None) -> TensorParallel:
    tp_group = stage_tp_group(group, layout)
    engine, problem = _build_stage_engine(spec, layout, group, tp_group, on_tensor)
    try:
        _check_all_built(group, problem)
    except LlamarunError:
        _kill(processes)
        close_group()
        raise
    engine.runner = BroadcastRunner(engine.runner, group)
    handle = TensorParallel(engine, group, processes)
    atexit.register(handle.close)  # the CLI never closes engines: stop the workers as the process ends
    return handle


@contextlib.contextmanager
def _torch_runner() -> Iterator[None]:
    """Make LLMEngine pick the torch runner: its runner is replaced by the stage's, so capture no graphs."""
    before = os.environ.get("LLAMARUN_RUNNER")
    os.environ["LLAMARUN_RUNNER"] = "torch"
    try:
        yield
    finally:
        if before is None:
            del os.environ["LLAMARUN_RUNNER"]
        else:
            os.environ["LLAMARUN_RUNNER"] = before


def _build_stage_engine(spec: ShardSpec, layout: Layout, group: ParallelGroup, tp_group: StageTPGroup,
                        on_tensor: Callable[[str], None] | None = None) -> tuple[LLMEngine | None, str | None]:
    """This rank's engine on its stage's shard, or why it could not be built (reported to every rank)."""
    from llamarun.loaders.registry import open_checkpoint
    from llamarun.parallel.plan import ShardPlan
    from llamarun.parallel.stage_link import StageLink
    from llamarun.parallel.stage_model import build_stage
    from llamarun.parallel.stage_plan import StagePlan
    from llamarun.parallel.stage_runner import StageRunner
    from llamarun.quant.modes import pack_hook

    try:
        dtype = getattr(torch, spec.dtype)
        ckpt = open_checkpoint(spec.path, spec.format)
        stage = StagePlan(ckpt.config, layout.stage_of(group.rank), layout.pp)
        shard = ShardPlan(ckpt.config, layout.tp_rank_of(group.rank), layout.tp)
        model = build_stage(ckpt, stage, shard, tp_group, StageLink(group, layout), dtype, on_tensor=on_tensor,
                            pack=pack_hook(spec.weights))
        with _torch_runner():
            engine = LLMEngine(model, spec.engine, dtype=dtype, device=group.device)  # type: ignore[arg-type]
        engine.runner = StageRunner(model, engine.cache, micro_batches=layout.pp)  # M stages: M in flight
        return engine, None
    except LlamarunError as err:
        return None, str(err)
    except Exception as err:  # a bug on one rank must still reach rank 0, not hang the rest
        return None, f"{type(err).__name__}: {err}"


def _stage_worker(rank: int, layout: Layout, port: int | None, spec: ShardSpec, local_rank: int | None = None
                  ) -> int:
    """Entry of ranks 1..N-1: join, build the stage's shard, serve steps until rank 0 stops them; the exit code."""
    import torch.distributed as dist

    if spec.device == "cpu":
        # The ranks of one host share its cores; without this each would start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // layout.world_size))
    try:
        store = None
        if port is not None:
            store = dist.TCPStore("127.0.0.1", port, layout.world_size, is_master=False,
                                  timeout=timedelta(seconds=spec.start_timeout_s))
            store.set(f"{_STARTED}{rank}", "1")
        group = init_group(rank, layout.world_size, spec.device, store=store, local_rank=local_rank,
                           timeout_s=spec.timeout_s, start_timeout_s=spec.start_timeout_s)
        tp_group = stage_tp_group(group, layout)
        engine, problem = _build_stage_engine(spec, layout, group, tp_group)
        _check_all_built(group, problem)
        serve_steps(engine.runner, group)
        return 0
    except LlamarunError as err:
        print(f"llamarun {layout.describe(rank)}: {err}", file=sys.stderr)
        return 1
    finally:
        close_group()


def _spawned_stage_worker(rank: int, layout: Layout, port: int, spec: ShardSpec) -> None:
    sys.exit(_stage_worker(rank, layout, port, spec))
