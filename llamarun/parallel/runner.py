"""The step protocol between ranks: rank 0 schedules, every rank runs the same plain-data step on its shard.

A SchedulerOutput holds ints, strings and frozen SamplingParams (engine/step.py), so it pickles; rank 0
broadcasts it before running it, and each worker runs it through its own ModelRunner (paged KV cache of
its own heads, sampler state of every request). After the logits gather every rank holds the same logits
and the same seeded generators, so every rank samples the same tokens; rank 0's answer is the one used.
Running the whole runner on the workers, sampler included, keeps each rank's sampler state (penalty
counts, generators) in step with rank 0's and lets any runner (the torch one, the CUDA-graph one) serve.
"""

from __future__ import annotations

from typing import Any

from llamarun.engine.step import SampledToken, SchedulerOutput
from llamarun.parallel.group import ParallelError, ParallelGroup


class BroadcastRunner:
    """Rank 0's runner: sends each step to the workers, then runs rank 0's shard of it.

    After a failed collective the ranks no longer agree on where they are, so every later step fails at
    once with the same error instead of waiting on peers that will never answer.
    """

    def __init__(self, inner: Any, group: ParallelGroup) -> None:
        self.inner, self.group = inner, group
        self.failure: ParallelError | None = None

    @property
    def model(self) -> Any:
        return self.inner.model

    def run(self, step: SchedulerOutput) -> dict[str, SampledToken]:
        """Broadcast `step`, run it here; {request id: token} for the sequences that sample."""
        if self.failure is not None:
            if not step.seqs:  # only runner state to drop (an abort after the failure): nothing to run
                return {}
            raise self.failure
        try:
            self.group.broadcast_object(step)
            return self.inner.run(step)
        except ParallelError as err:
            self.failure = err
            raise

    def stop_workers(self) -> None:
        """Tell the workers to leave their loop (a None step); nothing to tell after a failure."""
        if self.failure is None:
            self.group.broadcast_object(None, "stop broadcast")


def serve_steps(runner: Any, group: ParallelGroup) -> int:
    """A worker's loop: run every step rank 0 broadcasts until it sends None; returns the steps run."""
    steps = 0
    while True:
        step = group.broadcast_object(op_name="wait for the next step")
        if step is None:
            return steps
        runner.run(step)
        steps += 1
