"""`llamarun run --pp 2`, and torchrun with two "hosts" (two agents on localhost, one rank each) for run and serve.

The two torchrun agents stand in for two machines: each starts one process of the same command line,
they meet at the first agent's port, and rank 0 (node 0) answers while rank 1 runs the second stage.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
PROMPT = "the cat sat"
ARGS = ["--raw", PROMPT, "--temperature", "0", "--num-predict", "10"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    spec = TinySpec(num_layers=3, llama3_rope=True)
    return add_byte_tokenizer(write_hf(spec, make_weights(spec, seed=41)[0], tmp_path_factory.mktemp("cli") / "m"))


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> str:
    """One process's answer, through the Python API in this process."""
    from llamarun.api import LLM, SamplingParams

    llm = LLM(str(model_dir))
    try:
        text = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=10)).text
    finally:
        llm.close()
    assert text
    return text


@pytest.fixture
def home(tmp_path: Path, seed_kernels) -> Path:
    """A fresh home for each test, holding the session's compiled native kernels (tests/conftest.py)."""
    return seed_kernels(tmp_path / "home")


def environment(home: Path) -> dict[str, str]:
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    for key in ("LLAMARUN_TP", "LLAMARUN_PP"):
        env.pop(key, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun() -> str:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("torchrun is not installed next to this Python")
    return found


def two_hosts(command: list[str], home: Path) -> list[subprocess.Popen]:
    """Two torchrun agents, node ranks 0 and 1, one process each, meeting at node 0's port."""
    port = free_port()
    return [subprocess.Popen([torchrun(), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
                              "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "llamarun.cli.main",
                              *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=environment(home)) for node in (0, 1)]


def test_run_with_pp_2_answers_as_one_process(model_dir, expected, home):
    proc = subprocess.run([sys.executable, "-m", "llamarun.cli.main", "run", str(model_dir), *ARGS, "--pp", "2"],
                          capture_output=True, text=True, env=environment(home), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"


def test_torchrun_on_two_hosts_runs_two_stages(model_dir, expected, home):
    hosts = two_hosts(["run", str(model_dir), *ARGS, "--pp", "2"], home)
    outputs = [host.communicate(timeout=240) for host in hosts]
    assert [h.returncode for h in hosts] == [0, 0], [err for _, err in outputs]
    assert outputs[0][0] == expected + "\n"  # node 0 holds rank 0, which prints the answer
    assert outputs[1][0] == ""  # rank 1 ran the second stage and printed nothing


def test_serve_under_torchrun_on_two_hosts(model_dir, expected, home):
    """`serve MODEL --pp 2` on both hosts: node 0 opens the port, node 1 serves the second stage's steps."""
    port = free_port()
    hosts = two_hosts(["serve", str(model_dir), "--pp", "2", "--port", str(port)], home)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert all(h.poll() is None for h in hosts), [h.communicate()[1] for h in hosts]
            try:
                if httpx.get(f"{url}/api/ps", timeout=2).json().get("models"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not load its model in time"
            time.sleep(0.5)
        body = {"model": str(model_dir), "prompt": PROMPT, "raw": True, "stream": False,
                "options": {"num_predict": 10, "temperature": 0}}
        r = httpx.post(f"{url}/api/generate", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["response"] == expected
    finally:
        for host in hosts:
            if host.poll() is None:
                host.send_signal(signal.SIGTERM)
        for host in hosts:
            try:
                host.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                host.kill()
                host.communicate()
