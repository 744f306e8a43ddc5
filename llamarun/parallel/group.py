"""Process groups for tensor parallelism, and collectives that report which rank stopped where.

Two groups join the same ranks (after the default group, which only waits for them all to start, with
a long timeout). The activation group (gloo on CPUs, NCCL on GPUs) carries activations;
every collective on it has a short timeout, so a dead or hung rank surfaces as an error within
seconds instead of a hang. The control group (always gloo, on the host) carries each engine step from
rank 0 to the workers; its timeout is long, because a worker waits there for as long as the server
is idle. A dead peer still fails it at once: its sockets close when its process ends.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from llamarun.errors import LlamarunError, UnavailableError

DEFAULT_TIMEOUT_S = 60.0
START_TIMEOUT_S = 600.0  # joining and loading: a rank imports torch and reads its shard first
CONTROL_TIMEOUT = timedelta(days=7)  # a worker waits here while the server is idle


class ParallelError(UnavailableError):
    """A collective failed: a peer rank died, hung past the timeout, or never joined."""


@dataclass
class ParallelGroup:
    """This process's place among the ranks, with the groups its collectives go through."""

    rank: int
    world_size: int
    device: torch.device
    timeout_s: float
    group: Any  # the default process group (activations)
    control: Any  # gloo group for plain-data steps
    one_shot: Any = None  # a OneShotAllReduce for small CUDA tensors (parallel/one_shot.py), or None

    def all_reduce(self, x: torch.Tensor, op_name: str = "all_reduce") -> torch.Tensor:
        """Sum `x` over the ranks; returns the sum (x itself, summed in place, on the NCCL/gloo path)."""
        with _named(self, op_name):
            if self.one_shot is not None and self.one_shot.fits(x):
                return self.one_shot(x)
            dist.all_reduce(x, group=self.group)
        return x

    def enable_one_shot(self, dtype: torch.dtype) -> bool:
        """Set up the one-shot all-reduce for `dtype` activations where it can run; True when every rank has it.

        Every rank must take the same path in every collective, so it is used only when all ranks set it up.
        """
        from llamarun.parallel.one_shot import first_in_process, make_one_shot

        # Setting up is itself collective (a rendezvous): agree first that every rank can, or none tries.
        if not all(self.gather_objects(first_in_process(), "one-shot all-reduce set-up")):
            self.one_shot = None
            return False
        mine = make_one_shot(self.group, self.device, dtype)
        everyone = self.gather_objects(mine is not None, "one-shot all-reduce set-up")
        self.one_shot = mine if all(everyone) else None
        return self.one_shot is not None

    def all_gather_last(self, x: torch.Tensor, op_name: str = "all_gather") -> torch.Tensor:
        """Concatenate every rank's `x` along the last dim, rank order: [..., d] -> [..., world * d]."""
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        with _named(self, op_name):
            dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def broadcast_object(self, obj: Any = None, op_name: str = "step broadcast") -> Any:
        """Rank 0 sends `obj` (pickled) to every rank; every rank returns it. Two host collectives."""
        with _named(self, op_name):
            if self.rank == 0:
                payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)  # [bytes]
                size = torch.tensor([payload.numel()], dtype=torch.long)
            else:
                size = torch.zeros(1, dtype=torch.long)
            # Rank 0 gives up after the collective timeout (a root's broadcast waits for hung receivers too);
            # a worker waits for the next step as long as the server stays idle.
            short = timedelta(seconds=self.timeout_s)
            idle = short if self.rank == 0 else timedelta(0)  # 0: the group's own (days-long) timeout
            dist.broadcast(size, src=0, group=self.control, async_op=True).wait(idle)
            if self.rank != 0:
                payload = torch.empty(int(size.item()), dtype=torch.uint8)
            dist.broadcast(payload, src=0, group=self.control, async_op=True).wait(short)
        return obj if self.rank == 0 else pickle.loads(payload.numpy().tobytes())

    def gather_objects(self, obj: Any, op_name: str = "start-up check") -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (start-up reports; not for the hot path)."""
        out: list[Any] = [None] * self.world_size
        with _named(self, op_name):
            dist.all_gather_object(out, obj, group=self.control)
        return out


class _named:
    """Turns a failing collective into a ParallelError naming the rank and the collective."""

    def __init__(self, group: ParallelGroup, op_name: str) -> None:
        self.group, self.op_name = group, op_name

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if err is None or isinstance(err, LlamarunError) or not isinstance(err, RuntimeError | OSError):
            return False
        g = self.group
        raise ParallelError(
            f"rank {g.rank} of {g.world_size}: {self.op_name} failed ({str(err).splitlines()[0][:200]})",
            f"a peer rank died or stopped answering within {g.timeout_s:g} s; see its log, then restart all ranks",
        ) from None


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: str | torch.device, local_rank: int) -> torch.device:
    """The device rank `local_rank` of this host computes on: its own GPU, or the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    index = local_rank if device.index is None else device.index + local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_group(rank: int, world_size: int, device: str | torch.device, *, store: Any = None,
               local_rank: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
               start_timeout_s: float = START_TIMEOUT_S) -> ParallelGroup:
    """Join the ranks: through `store` (a TCPStore, when spawned here) or the env:// variables torchrun sets.

    Joining waits up to `start_timeout_s` (a rank first imports torch); collectives on activations then
    time out after `timeout_s`.
    """
    # NVLink multicast (NVLS) has hung and failed on the machines we use; the plain NCCL paths do not.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    dev = rank_device(device, rank if local_rank is None else local_rank)
    kwargs: dict[str, Any] = {"store": store} if store is not None else {"init_method": "env://"}
    if dev.type == "cuda":
        kwargs["device_id"] = dev  # binds NCCL to this rank's GPU at once
    backend = backend_for(dev)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=start_timeout_s), **kwargs)
        activations = dist.new_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        if dev.type == "cuda":  # create the NCCL communicator now, not inside the first CUDA-graph capture
            dist.all_reduce(torch.zeros(1, device=dev), group=activations)
    except (RuntimeError, ValueError, OSError) as err:
        close_group()
        raise ParallelError(f"rank {rank} of {world_size} could not join the process group ({err})",
                            f"the other ranks did not all start within {start_timeout_s:g} s") from None
    return ParallelGroup(rank, world_size, dev, timeout_s, activations, control)


def release_graphs(runner: Any) -> None:
    """Drop the CUDA graphs of `runner` (or of the runner it wraps) before the group closes.

    NCCL counts every graph that captured one of its collectives and will not tear a communicator down,
    destroy or abort, until those graphs are gone: with them alive, closing the group never returned.
    """
    while runner is not None:
        graphs = getattr(runner, "graphs", None)
        if isinstance(graphs, dict) and graphs:
            graphs.clear()
            import gc

            gc.collect()
            torch.cuda.synchronize()  # graph destruction's callbacks run before the communicator goes
        runner = runner.__dict__.get("inner")


def close_group() -> None:
    """Leave the process group (safe to call when none was made).

    NCCL groups are aborted, not destroyed: on two H200s the orderly teardown (destroy_process_group) of a
    group whose collectives CUDA graphs had captured never returned, on rank 0 or on the worker. The steps
    are over when this runs, so aborting the communicators loses nothing.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl":
        from torch.distributed import distributed_c10d as c10d

        abort = getattr(c10d, "_abort_process_group", None)
        if abort is not None:
            try:
                abort()
                return
            except (RuntimeError, ValueError):
                pass  # fall back to the orderly teardown
    dist.destroy_process_group()


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun (or another env:// launcher) started this process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))
