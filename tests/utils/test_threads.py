"""The CPU thread count: --threads, else the free cores (affinity minus busy ones), and the wait policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamarun.cli.main import build_parser, main
from llamarun.errors import LlamarunError
from llamarun.utils import threads

STAT = """cpu  {a} 0 0 {b} 0 0 0 0 0 0
cpu0 {c0} 0 0 {i0} 0 0 0 0 0 0
cpu1 {c1} 0 0 {i1} 0 0 0 0 0 0
intr 1 2 3
"""


def _stat(path: Path, c0: int, i0: int, c1: int, i1: int) -> None:
    path.write_text(STAT.format(a=c0 + c1, b=i0 + i1, c0=c0, i0=i0, c1=c1, i1=i1))


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    yield
    torch.set_num_threads(before)


def test_busy_cores_counts_cores_busy_for_most_of_the_sample(tmp_path, monkeypatch):
    path = tmp_path / "stat"
    _stat(path, 100, 100, 100, 100)
    real_sleep = threads.time.sleep
    # cpu0 busy 90 of 100 jiffies, cpu1 busy 10 of 100
    monkeypatch.setattr(threads.time, "sleep", lambda s: (_stat(path, 190, 110, 110, 190), real_sleep(0)))
    assert threads.busy_cores([0, 1], path=str(path)) == 1
    _stat(path, 100, 100, 100, 100)
    assert threads.busy_cores([1], path=str(path)) == 0  # only the allowed cores count
    assert threads.busy_cores([0, 1], path=str(tmp_path / "missing")) == 0  # unreadable: nothing known busy


@pytest.mark.parametrize(("busy", "expected"), [(0, 2), (1, 1), (2, 1)])
def test_default_is_the_free_cores_and_at_least_one(monkeypatch, busy, expected):
    monkeypatch.setattr(threads, "allowed_cores", lambda: [0, 1])
    monkeypatch.setattr(threads, "busy_cores", lambda cores, seconds: busy)
    assert threads.default_threads() == expected


def test_real_machine_sample_is_within_the_affinity_mask():
    assert 1 <= threads.default_threads(0.01) <= len(os.sched_getaffinity(0))


def test_prepare_applies_an_explicit_count_to_torch(restore_threads):
    assert threads.prepare(1) == 1
    assert torch.get_num_threads() == 1 and os.environ[threads.THREADS_ENV] == "1"
    assert threads.prepare() == 1  # the chosen count is kept (load_model calls it again)


def test_zero_threads_is_a_clear_error(restore_threads, capsys):
    with pytest.raises(LlamarunError, match="at least 1"):
        threads.prepare(0)
    assert main(["run", "no-such-model", "--threads", "0", "hi"]) != 0
    assert "--threads must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "m"], ["serve"], ["bench", "m"]])
def test_threads_flag_on_the_computing_commands(command):
    assert build_parser().parse_args([*command, "--threads", "3"]).threads == 3


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two allowed cores")
def test_fewer_threads_than_cores_sets_a_sleeping_wait_policy_before_torch_loads():
    code = ("import os, sys; from llamarun.utils.threads import prepare; prepare(1); "
            "assert 'torch' not in sys.modules; import torch; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('OMP_NUM_THREADS'), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", threads.THREADS_ENV)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["PASSIVE", "1", "1"]
