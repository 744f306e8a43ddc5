"""`llamarun run` at the edges of its terminal (issue 10, item 9): closed stdin, a reader that leaves, bad flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamarun.errors import LlamarunError
from llamarun.utils.devices import check_device

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def home(default_home: Path) -> Path:
    return default_home  # the session's home with the default model (tests/conftest.py): nothing here changes it


def shell(home: Path, script: str) -> subprocess.CompletedProcess:
    """Run `script` in bash, where `llamarun` is this tree's CLI."""
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1",
                        "LLAMARUN": f"{sys.executable} -m llamarun.cli.main"}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300)


def clean_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("Error: "), proc.stderr
    assert fragment in proc.stderr, proc.stderr


def test_closed_stdin_without_a_prompt_is_a_clean_error(home: Path) -> None:
    clean_error(shell(home, f"$LLAMARUN run {MODEL} <&-"), "stdin is closed")
    ok = shell(home, f"$LLAMARUN run {MODEL} 'Say hi.' --num-predict 4 --temperature 0 <&-")
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr  # with a prompt, stdin is not needed


def test_a_reader_that_leaves_early_ends_the_run_quietly(home: Path) -> None:
    proc = shell(home, f"$LLAMARUN run {MODEL} 'Tell me a long story about a dragon.' --num-predict 200 "
                       "--temperature 0 | head -c 5; echo \"status=${PIPESTATUS[0]}\" >&2")
    assert len(proc.stdout) == 5
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] in ("status=141", "status=0"), proc.stderr


@pytest.mark.parametrize(("flags", "fragment"), [("--ctx 0", "--ctx 0 is below 1"), ("--ctx -3", "--ctx -3"),
                                                 ("--device cpu:99", "cpu:99"), ("--device tpu", "tpu")])
def test_bad_flags_are_errors_before_the_load(home: Path, flags: str, fragment: str) -> None:
    clean_error(shell(home, f"$LLAMARUN run {MODEL} hi {flags}"), fragment)


def test_check_device() -> None:
    assert check_device("cpu") == "cpu" and check_device("cpu:0") == "cpu:0"
    with pytest.raises(LlamarunError, match="one CPU device"):
        check_device("cpu:99")
    import torch

    missing = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    with pytest.raises(LlamarunError, match="cuda"):
        check_device(missing)  # one past the last GPU, or any GPU on a machine without CUDA
