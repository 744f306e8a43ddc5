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
from llamarun.parallel.step_channel import StepChannel


class BroadcastRunner:
    """Rank 0's runner: sends each step to the workers, then runs rank 0's shard of it.

    After a failed collective the ranks no longer agree on where they are, so every later step fails at
    once with the same error instead of waiting on peers that will never answer.
    """

    def __init__(self, inner: Any, group: ParallelGroup, channel: StepChannel | None = None) -> None:
        self.inner, self.group, self.channel = inner, group, channel
        self.failure: ParallelError | None = None

    @property
    def model(self) -> Any:
        return self.inner.model

    def __getattr__(self, name: str) -> Any:
        # Everything else (capture_seconds, steps, ...) is the inner runner's; only reached for missing names.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def run(self, step: SchedulerOutput) -> dict[str, SampledToken]:
        """Broadcast `step`, run it here; {request id: token} for the sequences that sample."""
        if self.failure is not None:
            if not step.seqs:  # only runner state to drop (an abort after the failure): nothing to run
                return {}
            raise self.failure
        try:
            self._publish(step)
            return self.inner.run(step)
        except ParallelError as err:
            self.failure = err
            raise

    def can_overlap(self, step: SchedulerOutput) -> bool:
        """No overlapped decoding across ranks yet: each step is broadcast, then run whole (the inner runner's
        launch would run on this rank only)."""
        return False

    def stop_workers(self) -> None:
        """Tell the workers to leave their loop (a None step); nothing to tell after a failure."""
        if self.failure is None:
            self._publish(None, "stop broadcast")

    def _publish(self, step: SchedulerOutput | None, op_name: str = "step broadcast") -> None:
        """Send the step through the shared-memory channel, or over gloo (no channel, or a step too large)."""
        if self.channel is None or not self.channel.send(step):
            self.group.broadcast_object(step, op_name)


def serve_steps(runner: Any, group: ParallelGroup, channel: StepChannel | None = None) -> int:
    """A worker's loop: run every step rank 0 publishes until it sends None; returns the steps run."""
    steps = 0
    while True:
        if channel is not None:
            got, step = channel.receive(group.rank - 1)
            if not got:  # too large for the channel: it comes over gloo
                step = group.broadcast_object(op_name="wait for the next step")
        else:
            step = group.broadcast_object(op_name="wait for the next step")
        if step is None:
            return steps
        runner.run(step)
        steps += 1
