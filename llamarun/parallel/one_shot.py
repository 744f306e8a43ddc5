"""A one-shot all-reduce over peer GPU memory, for the small activations of decode steps.

NCCL's all-reduce pays a fixed cost per call (tens of microseconds) that dominates when the tensor is
one token's hidden state (16 KB at 70B). With PyTorch's symmetric memory every rank maps its peers'
buffers, so one kernel can copy this rank's activations into its own mapped buffer, wait on a signal
from each peer, and sum the peers' buffers directly ("one shot": every rank reads every other's data
once). It is worth it only for small tensors; larger ones (prefill chunks) go to NCCL, which also stays
the fallback wherever symmetric memory is unavailable (CPUs, old drivers, no peer access).

Which path runs is `LLAMARUN_ALLREDUCE` (nccl | one-shot | auto; auto = one-shot when it is set up),
chosen by measurement (benchmarks/gpu_allreduce.py); a failure to set up is logged and NCCL is used.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("llamarun.parallel")

ALLREDUCE_ENV = "LLAMARUN_ALLREDUCE"
_set_up_before = False  # see first_in_process
MAX_ONE_SHOT_BYTES = 512 * 1024  # past this NCCL's bandwidth wins; the sweep in gpu_allreduce.py shows where


def allreduce_choice() -> str:
    """The all-reduce the user asked for: nccl, one-shot or auto (the default)."""
    value = os.environ.get(ALLREDUCE_ENV, "auto").strip().lower()
    if value not in ("nccl", "one-shot", "auto"):
        from llamarun.errors import LlamarunError

        raise LlamarunError(f"{ALLREDUCE_ENV}={value!r} is not an all-reduce", "give nccl, one-shot or auto")
    return value


class OneShotAllReduce:
    """Sums small CUDA tensors over a group through one symmetric buffer per rank.

    The buffer is fixed, so the kernel's addresses are the same at every replay of a CUDA graph that
    captured it. Not thread-safe: one model's forward at a time uses it, as the runner guarantees.
    """

    def __init__(self, group: object, device: torch.device, dtype: torch.dtype,
                 max_bytes: int = MAX_ONE_SHOT_BYTES) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.dtype, self.max_elements = dtype, max_bytes // dtype.itemsize
        self.group_name = group.group_name  # type: ignore[attr-defined]
        self.buffer = symm_mem.empty(self.max_elements, dtype=dtype, device=device)  # [max_elements]
        global _set_up_before
        _set_up_before = True  # even a failed rendezvous has advanced the exchange counters
        symm_mem.rendezvous(self.buffer, self.group_name)
        self.op = torch.ops.symm_mem.one_shot_all_reduce
        # Where torch has it, the kernel that reduces also stages this rank's input into the buffer: one
        # launch per all-reduce instead of a copy and then the reduce (160 launches fewer per 70B token).
        self.op_copy = getattr(torch.ops.symm_mem, "one_shot_all_reduce_copy", None)

    def fits(self, x: torch.Tensor) -> bool:
        return x.is_cuda and x.dtype == self.dtype and x.numel() <= self.max_elements

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of `x` over the ranks, as a new tensor of x's shape (x is left as it was)."""
        staged = self.buffer[: x.numel()]
        flat = x.reshape(-1)
        if self.op_copy is not None:
            return self.op_copy(staged, flat, "sum", self.group_name).view(x.shape)
        staged.copy_(flat)
        return self.op(staged, "sum", self.group_name).view(x.shape)


def first_in_process() -> bool:
    """Whether this process has not set up a one-shot all-reduce before.

    Symmetric memory's rendezvous cannot be repeated against fresh peers: it numbers its exchanges per
    process, so a server's second parallel model (new workers, rank 0's counters already advanced) waited
    forever in it on two H200s. That model takes NCCL for every size instead.
    """
    return not _set_up_before


def make_one_shot(group: object, device: torch.device, dtype: torch.dtype) -> OneShotAllReduce | None:
    """A OneShotAllReduce when asked for (or auto) and it sets up on this device; else None (use NCCL)."""
    choice = allreduce_choice()
    if choice == "nccl" or device.type != "cuda":
        return None
    try:
        return OneShotAllReduce(group, device, dtype)
    except Exception as err:  # no symmetric memory here: NCCL serves every size
        if choice == "one-shot":
            from llamarun.parallel.group import ParallelError

            raise ParallelError(f"the one-shot all-reduce could not be set up ({err})",
                                f"unset {ALLREDUCE_ENV} to use NCCL") from None
        log.info("one-shot all-reduce unavailable (%s); using NCCL for every size", err)
        return None
