"""How many CPU threads llamarun computes with: `--threads N`, or the cores actually free at start.

On a machine shared with other programs, an OpenMP team as wide as the core count stalls at every
barrier behind a thread the kernel has descheduled: decode has hundreds of parallel regions per token,
so two threads on two cores with one core busy decode far slower than one thread. The default
therefore counts the cores this process may use (`sched_getaffinity`) minus the busy share of them,
sampled from /proc/stat for a few tens of milliseconds at start. When that leaves fewer threads than
cores, OpenMP threads are also told to sleep while they wait (`OMP_WAIT_POLICY=PASSIVE`) instead of
spinning on a core another program needs.

The wait policy is read once, when PyTorch's OpenMP runtime loads (at `import torch`), so `prepare`
runs before that (the CLI calls it right after parsing). Imports no torch at module level.
"""

from __future__ import annotations

import os
import sys
import time

from llamarun.errors import LlamarunError

THREADS_ENV = "LLAMARUN_THREADS"  # the chosen count, for `apply` (load_model) and child processes
SAMPLE_SECONDS = 0.05
BUSY_SHARE = 0.5  # a core busy more than half of the sample is not counted as free


def allowed_cores() -> list[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def _cpu_times(path: str = "/proc/stat") -> dict[int, tuple[int, int]]:
    """cpu id -> (busy, total) jiffies since boot (idle and iowait count as not busy)."""
    times = {}
    with open(path) as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            values = [int(v) for v in fields[:8]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def busy_cores(cores: list[int], seconds: float = SAMPLE_SECONDS, path: str = "/proc/stat") -> int:
    """How many of `cores` were busy (over `BUSY_SHARE` of the time) during a `seconds` sample; 0 if the
    kernel's counters cannot be read."""
    try:
        before = _cpu_times(path)
        time.sleep(seconds)
        after = _cpu_times(path)
    except (OSError, ValueError):
        return 0
    busy = 0
    for cpu in cores:
        if cpu in before and cpu in after:
            total = after[cpu][1] - before[cpu][1]
            if total > 0 and (after[cpu][0] - before[cpu][0]) / total > BUSY_SHARE:
                busy += 1
    return busy


def default_threads(seconds: float = SAMPLE_SECONDS) -> int:
    """The free cores now: those allowed minus those found busy, at least one."""
    cores = allowed_cores()
    return max(1, len(cores) - busy_cores(cores, seconds))


def check_threads(threads: int) -> int:
    """`threads` if it is a usable count, else a clear error."""
    if threads < 1:
        raise LlamarunError(f"--threads must be at least 1, not {threads}", "leave it out to use the free cores")
    return threads


def prepare(threads: int | None = None) -> int:
    """Choose the thread count (`threads`, else $LLAMARUN_THREADS, else the free cores), export it for
    `apply` and child processes, and set the OpenMP wait policy while it can still take effect.

    Returns the count. A wait policy or OMP_NUM_THREADS the user set is left alone.
    """
    if threads is None and os.environ.get(THREADS_ENV, "").isdigit():
        threads = int(os.environ[THREADS_ENV])
    count = check_threads(threads) if threads is not None else default_threads()
    os.environ[THREADS_ENV] = str(count)
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_NUM_THREADS", str(count))
        if count < len(allowed_cores()):  # sharing the machine: sleep while waiting, do not spin
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    apply()
    return count


def apply() -> int | None:
    """Give PyTorch the count `prepare` chose (a no-op before torch is imported, or when none was chosen)."""
    if "torch" not in sys.modules or not os.environ.get(THREADS_ENV, "").isdigit():
        return None
    import torch

    count = int(os.environ[THREADS_ENV])
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
