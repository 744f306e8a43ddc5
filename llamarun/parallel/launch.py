"""Start tensor-parallel ranks on one host and hand rank 0 a ready engine.

The calling process is rank 0: it keeps the scheduler, the engine loop and everything above them (CLI,
server). `start_tensor_parallel` spawns ranks 1..N-1 (torch.multiprocessing, spawn), which join through a
TCPStore rank 0 opens on a free port. Under torchrun (RANK / WORLD_SIZE set) nothing is spawned: every
process calls the same function, rank 0 gets the engine back, and the other ranks serve steps until rank
0 stops them, then exit. Each rank opens the checkpoint itself from `ShardSpec` (plain data), builds its
shard, and reports; a rank that fails to build makes start-up fail on every rank with its message.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.errors import LlamarunError
from llamarun.parallel.group import (
    DEFAULT_TIMEOUT_S,
    START_TIMEOUT_S,
    ParallelError,
    ParallelGroup,
    close_group,
    init_group,
    release_graphs,
    torchrun_env,
)
from llamarun.parallel.runner import BroadcastRunner, serve_steps
from llamarun.parallel.step_channel import StepChannel
from llamarun.parallel.step_channel import available as channel_available


@dataclass(frozen=True)
class ShardSpec:
    """What every rank needs to build its shard and engine; plain data, so it crosses into spawned processes."""

    path: str
    format: str
    engine: EngineConfig
    dtype: str = "float32"
    device: str = "cpu"
    weights: str = "exact"  # a --weights mode; its method packs each rank's own slices
    timeout_s: float = DEFAULT_TIMEOUT_S  # per collective once running
    start_timeout_s: float = START_TIMEOUT_S  # for all ranks to start and build their shards


@dataclass
class TensorParallel:
    """Rank 0's handle: the engine (its runner broadcasts every step), and the workers to stop on close."""

    engine: LLMEngine
    group: ParallelGroup
    processes: list[Any] = field(default_factory=list)  # spawned workers; empty under torchrun
    closed: bool = False
    channel: StepChannel | None = None  # the shared-memory step channel (spawned workers on this host)

    def close(self) -> None:
        """Stop the workers, wait for them (killing any that hang), and leave the process group. Idempotent."""
        if self.closed:
            return
        self.closed = True
        runner = self.engine.runner
        try:
            if isinstance(runner, BroadcastRunner):
                runner.stop_workers()
        except ParallelError:
            pass  # a worker is gone already; the others fail their wait and exit on their own
        # Leave the group before waiting: NCCL's communicator teardown waits for every rank's, so a worker
        # joined first would wait in its own teardown for ours until the timeout killed it.
        release_graphs(runner)
        close_group()
        for proc in self.processes:
            proc.join(timeout=self.group.timeout_s)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if self.channel is not None:
            self.channel.close()


def start_tensor_parallel(spec: ShardSpec, world_size: int,
                          on_tensor: Callable[[str], None] | None = None) -> TensorParallel:
    """Rank 0's engine over `world_size` ranks (spawned here, or already started by torchrun).

    Under torchrun, ranks other than 0 never return: they serve steps, then exit the process.
    """
    if world_size < 1:
        raise LlamarunError(f"--tp {world_size} is below 1", "give the number of ranks, e.g. --tp 2")
    _check_plan(spec, world_size)  # a --tp the model cannot split fails here, before any process starts
    import torch.distributed as dist

    if dist.is_initialized():
        raise LlamarunError("a tensor-parallel model is already running in this process",
                            "close it (TensorParallel.close) before loading another with --tp")
    env = torchrun_env()
    if env is not None:
        rank, world, local_rank = env
        if world != world_size:
            raise LlamarunError(f"torchrun started {world} ranks, but --tp asks for {world_size}",
                                "give torchrun --nproc-per-node the same number as --tp")
        if rank != 0:
            code = _worker(rank, world, None, spec, local_rank)
            sys.exit(code)
        group = init_group(0, world, spec.device, local_rank=local_rank, timeout_s=spec.timeout_s,
                           start_timeout_s=spec.start_timeout_s)
        return _rank_zero(spec, group, [], on_tensor)
    group, processes = spawn_ranks(spec, world_size, _spawned_worker,
                                   lambda rank, port: (rank, world_size, port, spec), "llamarun-tp-rank")
    return _rank_zero(spec, group, processes, on_tensor)


def spawn_ranks(spec: ShardSpec, world_size: int, target: Callable[..., None],
                args_for: Callable[[int, int], tuple], name: str) -> tuple[ParallelGroup, list[Any]]:
    """Spawn ranks 1..world_size-1 (`target(*args_for(rank, store_port))`), join them as rank 0; group and processes.

    A rank that dies while starting fails start-up at once, naming its exit code; the others are killed.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True,
                          timeout=timedelta(seconds=spec.start_timeout_s), wait_for_workers=False)
    ctx = mp.get_context("spawn")
    processes = [ctx.Process(target=target, args=args_for(rank, store.port), daemon=True, name=f"{name}{rank}")
                 for rank in range(1, world_size)]
    for proc in processes:
        proc.start()
    try:
        _wait_started(store, processes, spec.start_timeout_s)
        group = init_group(0, world_size, spec.device, store=store, timeout_s=spec.timeout_s,
                           start_timeout_s=spec.start_timeout_s)
    except ParallelError as err:
        dead = [f"rank {r} exited with code {p.exitcode}" for r, p in enumerate(processes, 1) if not p.is_alive()]
        _kill(processes)
        raise ParallelError(f"{err.message}{': ' + ', '.join(dead) if dead else ''}", err.hint) from None
    return group, processes


_STARTED = "llamarun/started/"


def _wait_started(store: Any, processes: list[Any], timeout_s: float) -> None:
    """Wait until every spawned rank has reached the store; one that died first fails start-up at once."""
    keys = [f"{_STARTED}{rank}" for rank in range(1, len(processes) + 1)]
    deadline = time.monotonic() + timeout_s
    while not store.check(keys):
        for rank, proc in enumerate(processes, 1):
            if not proc.is_alive():
                raise ParallelError(f"tensor-parallel rank {rank} exited with code {proc.exitcode} while starting",
                                    "see its error above")
        if time.monotonic() > deadline:
            raise ParallelError(f"the tensor-parallel ranks did not start within {timeout_s:g} s",
                                "is the machine overloaded?")
        time.sleep(0.05)


def _check_plan(spec: ShardSpec, world_size: int) -> None:
    from llamarun.parallel.plan import ShardPlan

    ShardPlan(_whole_config(spec), 0, world_size)


def _whole_config(spec: ShardSpec) -> Any:
    """The whole model's config: from the checkpoint, or the named shape of a random-weight build."""
    from llamarun.parallel.random_shard import RANDOM_FORMAT, random_config

    if spec.format == RANDOM_FORMAT:
        return random_config(spec.path)
    from llamarun.loaders.registry import open_checkpoint

    return open_checkpoint(spec.path, spec.format).config


def _rank_zero(spec: ShardSpec, group: ParallelGroup, processes: list[Any],
               on_tensor: Callable[[str], None] | None) -> TensorParallel:
    try:
        engine = _build_engine(spec, group, on_tensor)
    except LlamarunError:
        _kill(processes)
        close_group()
        raise
    channel = _open_channel(group, spawned=bool(processes), timeout_s=spec.timeout_s)
    engine.runner = BroadcastRunner(engine.runner, group, channel)
    handle = TensorParallel(engine, group, processes, channel=channel)
    atexit.register(handle.close)  # the CLI and server never close engines: stop the workers as the process ends
    return handle


def _build_engine(spec: ShardSpec, group: ParallelGroup, on_tensor: Callable[[str], None] | None = None
                  ) -> LLMEngine:
    """This rank's engine on its shard, once every rank has built its shard (else every rank raises)."""
    model, problem = _build_model(spec, group, on_tensor)
    _check_all_built(group, problem)
    dtype = getattr(torch, spec.dtype)
    group.enable_one_shot(dtype)  # a collective set-up: before the engine captures its CUDA graphs
    return LLMEngine(model, spec.engine, dtype=dtype, device=group.device, grammar_vocab=_grammar_vocab(spec))


def _grammar_vocab(spec: ShardSpec) -> Any:
    """The token bytes grammars compile against, on every rank.

    Every rank samples from the same gathered logits, so every rank's grammar matcher must mask and advance
    the same way rank 0's does; random-weight builds have no tokenizer and take no grammar requests.
    """
    from llamarun.parallel.random_shard import RANDOM_FORMAT

    if spec.format == RANDOM_FORMAT:
        return None
    from llamarun.loaders.registry import open_checkpoint
    from llamarun.structured.vocab import GrammarVocab

    ckpt = open_checkpoint(spec.path, spec.format)
    try:
        tokenizer = ckpt.tokenizer()
    except LlamarunError:  # weights without a tokenizer still run; grammar requests are then refused clearly
        return None
    return GrammarVocab.from_tokenizer(tokenizer, ckpt.stop_token_ids(), ckpt.config.vocab_size)


def _build_model(spec: ShardSpec, group: ParallelGroup, on_tensor: Callable[[str], None] | None = None
                 ) -> tuple[Any, str | None]:
    """This rank's sharded model, or the reason it could not be built (reported to every rank)."""
    from llamarun.loaders.registry import open_checkpoint
    from llamarun.parallel.load import build_shard
    from llamarun.parallel.plan import ShardPlan
    from llamarun.parallel.random_shard import RANDOM_FORMAT, build_random_shard

    try:
        dtype = getattr(torch, spec.dtype)
        if spec.format == RANDOM_FORMAT:
            plan = ShardPlan(_whole_config(spec), group.rank, group.world_size)
            return build_random_shard(spec.path, plan, group, dtype, spec.weights), None
        ckpt = open_checkpoint(spec.path, spec.format)
        plan = ShardPlan(ckpt.config, group.rank, group.world_size)
        from llamarun.quant.modes import pack_hook

        pack = pack_hook(spec.weights)  # each rank packs its own slices
        return build_shard(ckpt, plan, group, dtype, on_tensor=on_tensor, pack=pack), None
    except LlamarunError as err:
        return None, str(err)
    except Exception as err:  # a bug on one rank must still reach rank 0, not hang the rest
        return None, f"{type(err).__name__}: {err}"


def _open_channel(group: ParallelGroup, *, spawned: bool, timeout_s: float) -> StepChannel | None:
    """Rank 0's shared-memory step channel when all ranks are its own children on this host; its name to all.

    GPU ranks only: a waiting worker spins on a core, which GPU hosts have to spare, while CPU ranks need
    every core for their own matmuls (there the spin slowed a 2-core machine's steps tenfold).
    """
    use = spawned and group.device.type == "cuda" and channel_available()
    channel = StepChannel(group.world_size - 1, timeout_s=timeout_s) if use else None
    group.broadcast_object(channel.name if channel else None, "step channel set-up")
    return channel


def _check_all_built(group: ParallelGroup, problem: str | None) -> None:
    reports = group.gather_objects(problem)
    failed = [(rank, why) for rank, why in enumerate(reports) if why is not None]
    if failed:
        rank, why = failed[0]
        raise LlamarunError(f"rank {rank} could not build its shard: {why}", "fix the first failing rank's cause")


def _worker(rank: int, world_size: int, port: int | None, spec: ShardSpec, local_rank: int | None = None) -> int:
    """Entry of ranks 1..N-1: join, build the shard, serve steps until rank 0 stops them; the exit code."""
    import torch.distributed as dist

    if spec.device == "cpu":
        # The ranks of one host share its cores; without this each would start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    runner = None
    try:
        store = None
        if port is not None:
            store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                                  timeout=timedelta(seconds=spec.start_timeout_s))
            store.set(f"{_STARTED}{rank}", "1")
        group = init_group(rank, world_size, spec.device, store=store, local_rank=local_rank,
                           timeout_s=spec.timeout_s, start_timeout_s=spec.start_timeout_s)
        engine = _build_engine(spec, group)
        runner = engine.runner
        name = group.broadcast_object(op_name="step channel set-up")
        channel = StepChannel(world_size - 1, name, spec.timeout_s) if name else None
        try:
            serve_steps(engine.runner, group, channel)
        finally:
            if channel is not None:
                channel.close()
        return 0
    except LlamarunError as err:
        print(f"llamarun tensor-parallel rank {rank}: {err}", file=sys.stderr)
        return 1
    finally:
        release_graphs(runner)
        close_group()


def _spawned_worker(rank: int, world_size: int, port: int, spec: ShardSpec) -> None:
    sys.exit(_worker(rank, world_size, port, spec))


def _kill(processes: list[Any]) -> None:
    for proc in processes:
        if proc.is_alive():
            proc.kill()
        proc.join()
