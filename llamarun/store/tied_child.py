"""Child processes that die with the process that started them (issue 10, item 8: no orphaned `pip download`).

`subprocess.run` kills its child when the caller is interrupted (Ctrl-C, an exception), but not when the
caller itself dies without running Python code: SIGKILL, a SIGTERM with the default handler, a crash. The
child then lives on, re-parented, finishing a download into a staging folder nobody will commit. So the
store starts Python children through a small guard: a daemon thread in the child polls its parent pid and
exits the child as soon as the parent is gone (re-parenting changes `os.getppid()`), then the guard runs
the real module or code as `python -m` / `python -c` would. Portable to any POSIX system, no preexec_fn
(unsafe in a threaded server).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

POLL_SECONDS = 0.2

# Runs in the child: argv is [parent pid, poll seconds, "-m", module, args...] or [..., "-c", code, args...].
_GUARD = """
import os, runpy, sys, threading, time
parent, poll = int(sys.argv[1]), float(sys.argv[2])
del sys.argv[2]
def watch():
    while os.getppid() == parent:
        time.sleep(poll)
    os._exit(137)  # the parent is gone: stop now, whatever the main thread is doing
threading.Thread(target=watch, daemon=True, name="parent-watch").start()
mode, target, rest = sys.argv[2], sys.argv[3], sys.argv[4:]
if mode == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
"""


def tied_python_command(args: Sequence[str]) -> list[str]:
    """The command line running `python ARGS` (`-m module ...` or `-c code ...`) tied to this process."""
    if len(args) < 2 or args[0] not in ("-m", "-c"):
        raise ValueError("args must start with -m MODULE or -c CODE")
    return [sys.executable, "-c", _GUARD, str(os.getpid()), str(POLL_SECONDS), *args]


def run_tied_python(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run([python, *args], **kwargs)`, with the child tied to this process's life."""
    return subprocess.run(tied_python_command(args), **kwargs)
