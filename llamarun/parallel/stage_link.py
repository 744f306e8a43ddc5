"""Point-to-point between pipeline stages: activations forward, sampled tokens back to the scheduler.

Rank (stage s, tp rank t) receives from (s - 1, t) and sends to (s + 1, t): after the stage's
all-reduces every tp rank holds the same hidden states, so each passes its own copy and no stage
gathers. Activation sends are started and waited for later (`finish_sends`), so a stage runs its next
micro-batch while the last one travels. The activations go on the activation group (gloo on CPUs,
NCCL on GPUs). The last stage samples; its tp rank 0 sends the sampled tokens (plain data, pickled)
to rank 0 on the host-side control group, because the scheduler there needs them before the next
step. Every send and receive waits at most the collective timeout, and a failure names the rank, its
stage and the operation.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from llamarun.errors import LlamarunError
from llamarun.parallel.group import ParallelError, ParallelGroup
from llamarun.parallel.layout import Layout


class StageLink:
    """This rank's neighbours in the pipeline, and the p2p operations between them."""

    def __init__(self, group: ParallelGroup, layout: Layout) -> None:
        self.group, self.layout = group, layout
        rank = group.rank
        self.stage = layout.stage_of(rank)
        self.previous = rank - layout.tp if self.stage > 0 else None
        self.next = rank + layout.tp if self.stage < layout.pp - 1 else None
        self.leader_of_last = layout.rank_of(layout.pp - 1, 0)  # the rank that reports sampled tokens
        self.timeout = timedelta(seconds=group.timeout_s)

    @property
    def reports_tokens(self) -> bool:
        """Whether this rank sends the sampled tokens to rank 0 (the last stage's tp rank 0, when it is not 0)."""
        return self.group.rank == self.leader_of_last and self.group.rank != 0

    @property
    def waits_for_tokens(self) -> bool:
        """Whether this rank receives the sampled tokens (rank 0, when it does not sample itself)."""
        return self.group.rank == 0 and self.leader_of_last != 0

    def start_send_hidden(self, x: torch.Tensor) -> tuple[Any, torch.Tensor, str]:
        """Start handing `x` ([2, tokens, hidden]: layer output and residual) to the next stage; finish_sends
        waits for it, so the stage can run its next micro-batch meanwhile."""
        assert self.next is not None
        x = x.contiguous()  # kept alive with the work until the send lands
        op = f"send of activations to rank {self.next}"
        return self._run(lambda: dist.isend(x, self.next, group=self.group.group), op), x, op

    def finish_sends(self, sends: list[tuple[Any, torch.Tensor, str]]) -> None:
        """Wait for sends `start_send_hidden` began, each at most the timeout."""
        for work, _, op in sends:
            self._run(lambda work=work: work.wait(self.timeout), op)
        sends.clear()

    def recv_hidden(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The previous stage's [2, tokens, hidden]."""
        assert self.previous is not None
        x = torch.empty(shape, dtype=dtype, device=self.group.device)
        self._wait(lambda: dist.irecv(x, self.previous, group=self.group.group),
                   f"receive of activations from rank {self.previous}")
        return x

    def send_tokens(self, sampled: dict[str, Any]) -> None:
        """The last stage's answer to rank 0: size, then the pickled bytes."""
        payload = torch.frombuffer(bytearray(pickle.dumps(sampled)), dtype=torch.uint8)  # [bytes]
        size = torch.tensor([payload.numel()], dtype=torch.long)
        control = self.group.control
        self._wait(lambda: dist.isend(size, 0, group=control), "send of sampled tokens to rank 0")
        self._wait(lambda: dist.isend(payload, 0, group=control), "send of sampled tokens to rank 0")

    def recv_tokens(self) -> dict[str, Any]:
        """Rank 0's receive of what the last stage sampled."""
        size = torch.zeros(1, dtype=torch.long)
        source, control = self.leader_of_last, self.group.control
        op = f"receive of sampled tokens from rank {source}"
        self._wait(lambda: dist.irecv(size, source, group=control), op)
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self._wait(lambda: dist.irecv(payload, source, group=control), op)
        return pickle.loads(payload.numpy().tobytes())

    def _wait(self, start: Callable[[], Any], op: str) -> None:
        """Start a p2p operation and wait for it, at most the timeout; failures become ParallelError."""
        work = self._run(start, op)
        self._run(lambda: work.wait(self.timeout), op)

    def _run(self, call: Callable[[], Any], op: str) -> Any:
        try:
            return call()
        except LlamarunError:
            raise
        except (RuntimeError, OSError) as err:
            rank = self.group.rank
            raise ParallelError(
                f"{self.layout.describe(rank)} of {self.layout.world_size}: {op} failed "
                f"({str(err).splitlines()[0][:200]})",
                f"a peer rank died or stopped answering within {self.group.timeout_s:g} s; see its log, "
                "then restart all ranks") from None
