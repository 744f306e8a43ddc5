"""Rank 0's steps to the workers of one host through shared memory, not through gloo.

Two gloo broadcasts (size, then bytes) cost 0.8 ms a step on a two-H200 host, 4% of a 70B decode step
at TP=2, and every step pays it before the workers can start. Here rank 0 writes the pickled step into
one shared-memory segment and bumps a sequence number; each worker spins on that number, copies the
bytes out and writes back an acknowledgement. Rank 0 overwrites the segment only after every worker has
acknowledged the previous step, so a step is never torn. A step too large for the segment (a very long
prompt) goes over gloo as before: the segment then carries only a marker that says so.

Layout (little-endian int64 words): [0] sequence, [1] length (or -1: use gloo), [2 + i] worker i's ack,
then the payload. Stores and loads keep program order on x86 (TSO); hosts with weaker ordering use gloo
(`available()`). Workers watch their parent: if rank 0's process is gone, they stop instead of spinning.
"""

from __future__ import annotations

import os
import pickle
import platform
import struct
import time
from multiprocessing import shared_memory
from typing import Any

from llamarun.parallel.group import ParallelError

CAPACITY = 4 << 20  # bytes of payload: a step of 64 prompts of 8k tokens fits; beyond it, gloo
USE_GLOO = -1
SPIN_S = 0.005  # spin this long before sleeping between polls: a decode step arrives well within it
_WORD = struct.Struct("<q")


def available() -> bool:
    """Whether this host can use the channel: x86 (store order is program order) and the user did not opt out."""
    return platform.machine() in ("x86_64", "AMD64") and os.environ.get("LLAMARUN_STEP_CHANNEL", "1") != "0"


class StepChannel:
    """One writer (rank 0) and `workers` readers of pickled steps in one shared-memory segment."""

    def __init__(self, workers: int, name: str | None = None, timeout_s: float = 60.0) -> None:
        self.workers, self.timeout_s = workers, timeout_s
        self.header = 8 * (2 + workers)
        if name is None:
            self.shm = shared_memory.SharedMemory(create=True, size=self.header + CAPACITY)
            self.shm.buf[: self.header] = bytes(self.header)
            self.owner = True
        else:
            self.shm = _attach(name)
            self.owner = False
        self.buf = self.shm.buf
        self.seq = 0
        self.parent = os.getppid()

    @property
    def name(self) -> str:
        return self.shm.name

    def _get(self, word: int) -> int:
        return _WORD.unpack_from(self.buf, 8 * word)[0]

    def _put(self, word: int, value: int) -> None:
        _WORD.pack_into(self.buf, 8 * word, value)

    # ----- rank 0 -----

    def send(self, obj: Any) -> bool:
        """Publish `obj`; False when it is too large and the caller must broadcast it over gloo (workers expect it)."""
        self._wait_acks()
        payload = pickle.dumps(obj)
        fits = len(payload) <= CAPACITY
        if fits:
            self.buf[self.header: self.header + len(payload)] = payload
        self._put(1, len(payload) if fits else USE_GLOO)
        self.seq += 1
        self._put(0, self.seq)  # last: a reader that sees the new number sees the bytes before it
        return fits

    def _wait_acks(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        spins = 0
        for i in range(self.workers):
            while self._get(2 + i) != self.seq:
                spins += 1
                if spins > 1000:
                    time.sleep(0.0001)
                    if time.monotonic() > deadline:
                        raise ParallelError(f"rank 0: rank {i + 1} did not take step {self.seq} within "
                                            f"{self.timeout_s:g} s", "see that rank's log; restart all ranks")

    # ----- workers -----

    def receive(self, worker: int) -> tuple[bool, Any]:
        """(True, step) once rank 0 publishes the next one; (False, None) when it went over gloo instead.

        Waits as long as the server is idle (spinning briefly, then sleeping), but not past rank 0's death.
        """
        want = self.seq + 1
        started = time.monotonic()
        while self._get(0) != want:
            idle = time.monotonic() - started
            if idle > SPIN_S:
                time.sleep(0.0001 if idle < 1.0 else 0.001)
                if os.getppid() != self.parent:
                    raise ParallelError(f"rank {worker + 1}: rank 0 exited while this rank waited for a step",
                                        "restart all ranks")
        length = self._get(1)
        obj = pickle.loads(bytes(self.buf[self.header: self.header + length])) if length != USE_GLOO else None
        self.seq = want
        self._put(2 + worker, want)  # rank 0 may now overwrite the payload
        return length != USE_GLOO, obj

    def close(self) -> None:
        """Unmap the segment; the owner also removes it."""
        self.buf = None  # type: ignore[assignment]
        try:
            self.shm.close()
            if self.owner:
                self.shm.unlink()
        except (FileNotFoundError, BufferError):
            pass


def _attach(name: str) -> shared_memory.SharedMemory:
    """Map an existing segment without registering it with the resource tracker.

    Before Python 3.13 attaching registers the segment as if this process had made it, so the tracker (which
    spawned ranks share with rank 0) would remove it, or complain, when it is not ours to remove.
    """
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    resource_tracker.register = lambda *_args, **_kwargs: None  # type: ignore[assignment]
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register  # type: ignore[assignment]
