"""Programmatic dependent launch (Hopper and later): a kernel is scheduled while the one before it drains.

In a batch-1 decode step most kernels are small, and the idle time between two dependent kernels (the second
one's launch, the first one's teardown) is a visible part of each. Launched this way, a kernel's blocks may
start before the previous kernel has fully finished; each such kernel calls `gdc_wait()` before it reads
anything the previous kernels wrote (weights may be read before it: nothing in a step writes them), and each
calls `gdc_launch_dependents()` as early as it may (small kernels at their start, GEMVs once their loads are
done) so that the next kernel's launch overlaps its tail; its own `gdc_wait()` still waits for this kernel to
finish and its writes to be visible, so no kernel writes before the one before it is done. Inside
CUDA graphs the dependency is captured as a programmatic edge. `LLAMARUN_PDL=off` launches plainly.
"""

from __future__ import annotations

import functools
import os

import torch

ENABLED = os.environ.get("LLAMARUN_PDL", "on").strip().lower() != "off"


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_launch(t: torch.Tensor) -> tuple[bool, dict]:
    """(the kernel's PDL flag, extra launch arguments) for a kernel running on t's device."""
    on = ENABLED and t.is_cuda and _capable(t.device.index if t.device.index is not None else 0)
    return on, ({"launch_pdl": True} if on else {})
