"""SIGTERM drains `llamarun serve` (issue 10, item 10): new requests get 503, running streams finish, exit 0.

A real server process (uvicorn, signal handling, the engine hub on the main thread) serving a fake
model whose replies take a known time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import DEFAULT, free_port

pytestmark = pytest.mark.timeout(120)
# `llamarun serve` with the model loader replaced by the tests' fake (a 100-token reply at 30 ms a token).
RUN_FAKE_SERVE = (
    "import argparse, sys; sys.path.insert(0, sys.argv[1]); from fake_llm import FakeLoader; "
    "import llamarun.server.model_manager as mm; "
    "mm.default_loader = lambda **kw: FakeLoader(token_delay=0.03, reply='w' * 100); "
    "from llamarun.cli import serve_cmd; p = argparse.ArgumentParser(); serve_cmd.register(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[2:]); sys.exit(a.handler(a))")


def start(store, port: int, *argv: str) -> subprocess.Popen:
    env = os.environ | {"LLAMARUN_HOME": str(store.root), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", RUN_FAKE_SERVE, str(Path(__file__).parent), "serve", DEFAULT,
                             "--port", str(port), "--log-level", "warning", *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except httpx.TransportError:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the server did not answer within 60 s"
            time.sleep(0.1)


def test_sigterm_lets_running_streams_finish_and_refuses_new_requests(store) -> None:
    port = free_port()
    proc = start(store, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client, client.stream(
                "POST", "/api/generate", json={"model": DEFAULT, "prompt": "go"}) as stream:
            lines = stream.iter_lines()
            next(lines)  # streaming: ~3 s to go
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with httpx.Client(base_url=url, timeout=10) as other:
                r = other.post("/api/generate", json={"model": DEFAULT, "prompt": "x", "stream": False})
                assert r.status_code == 503 and r.headers["retry-after"], r.text
            rest = list(lines)
            final = json.loads(rest[-1])
            assert final["done"] is True and final["eval_count"] == 100  # the whole reply
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "draining" in err and "Traceback" not in err and "CancelledError" not in err
        assert time.monotonic() - t0 < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stream_longer_than_the_grace_period_is_stopped_and_the_server_exits(store) -> None:
    port = free_port()
    proc = start(store, port, "--drain-seconds", "0.5")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client, client.stream(
                "POST", "/api/generate", json={"model": DEFAULT, "prompt": "go"}) as stream:
            lines = stream.iter_lines()
            next(lines)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # ended after the grace period, with an error event instead of done
            assert "shutting down" in json.loads(rest[-1])["error"] and '"done":true' not in rest[-1]
            assert time.monotonic() - t0 < 2.5  # ended at the grace period, before the 3 s reply was done
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "still running after 0.5 s" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
