"""`llamarun run --tp 2` and the same command under torchrun: real processes, the one-process answer."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ARGS = ["--raw", "the cat sat", "--temperature", "0", "--num-predict", "10"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    spec = TinySpec(llama3_rope=True)
    weights, _ = make_weights(spec, seed=11)
    return add_byte_tokenizer(write_hf(spec, weights, tmp_path_factory.mktemp("cli") / "tiny"))


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> str:
    """The answer of one process, through the Python API in this process."""
    from llamarun.api import LLM, SamplingParams

    llm = LLM(str(model_dir))
    try:
        text = llm.generate("the cat sat", SamplingParams(temperature=0, max_tokens=10)).text
    finally:
        llm.close()
    assert text  # an empty answer would make the comparisons below weak
    return text


@pytest.fixture
def home(tmp_path: Path, seed_kernels) -> Path:
    """A fresh home for each test, holding the session's compiled native kernels (tests/conftest.py)."""
    return seed_kernels(tmp_path / "home")


def run(command: list[str], home: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    env.pop("LLAMARUN_TP", None)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def test_run_with_tp_2_answers_as_one_process(model_dir, expected, home):
    proc = run([sys.executable, "-m", "llamarun.cli.main", "run", str(model_dir), *ARGS, "--tp", "2"], home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"


def test_torchrun_starts_the_same_ranks(model_dir, expected, home):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run([torchrun, "--nproc-per-node", "2", "--master-port", str(port), "-m", "llamarun.cli.main", "run",
                str(model_dir), *ARGS], home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"  # rank 0 prints the answer; rank 1 serves steps and prints nothing
