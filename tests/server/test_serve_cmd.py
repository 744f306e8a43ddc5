"""`llamarun serve`: flags, clean errors for bad ones and a taken port, and a real server process."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import DEFAULT, free_port
from fake_llm import DEFAULT_REPLY, FakeLoader
from fastapi.testclient import TestClient

from llamarun.cli import serve_cmd
from llamarun.errors import LlamarunError

pytestmark = pytest.mark.timeout(90)
# The lead wires `serve` into llamarun.cli.main; until then this is the same parser and handler.
RUN_SERVE = ("import argparse, sys; from llamarun.cli import serve_cmd; p = argparse.ArgumentParser(); "
             "serve_cmd.register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cmd.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_defaults() -> None:
    args = parse()
    assert (args.model, args.host, args.port) == (None, "127.0.0.1", 11434)
    assert (args.ctx, args.keep_alive, args.api_key) == (None, None, os.environ.get("LLAMARUN_API_KEY"))
    assert serve_cmd.check_args(args) == 300.0
    args = parse(DEFAULT, "--port", "8080", "--api-key", "k", "--ctx", "2048", "--keep-alive", "-1")
    assert (args.model, args.port, args.api_key, args.ctx) == (DEFAULT, 8080, "k", 2048)
    assert serve_cmd.check_args(args) == -1.0


@pytest.mark.parametrize("argv, fragment", [
    (["--port", "70000"], "not a port"), (["--ctx", "0"], "--ctx"), (["--keep-alive", "soon"], "keep_alive"),
    (["--api-key", " "], "empty"), (["--memory-budget", "-2"], "memory-budget"),
    (["--max-body-bytes", "0"], "--max-body-bytes"), (["--max-queue", "0"], "--max-queue"),
    (["--drain-seconds", "-1"], "--drain-seconds"),
])
def test_bad_flags_are_one_line_errors(argv: list[str], fragment: str) -> None:
    with pytest.raises(LlamarunError) as err:
        serve_cmd.check_args(parse(*argv))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LlamarunError, match=f"cannot listen on 127.0.0.1:{port}.*another --port"):
            serve_cmd.bind("127.0.0.1", port)
    with pytest.raises(LlamarunError, match="cannot resolve"):
        serve_cmd.bind("no-such-host.invalid", 0)


def test_build_app_preloads_and_guards(store, monkeypatch) -> None:
    monkeypatch.setenv("LLAMARUN_HOME", str(store.root))
    loader = FakeLoader()
    args = parse(DEFAULT, "--api-key", "k", "--ctx", "256", "--max-body-bytes", "5000", "--max-queue", "7")
    app = serve_cmd.build_app(args, serve_cmd.check_args(args), loader=loader)
    assert app.state.max_body_bytes == 5000 and app.state.admission.max_queue == 7
    with TestClient(app, base_url="http://127.0.0.1:11434") as client:  # bound to loopback: Host is checked
        assert [m.name for m in loader.instances] == [DEFAULT]  # loaded before the first request
        assert loader.instances[0].context_length == 256
        assert client.get("/api/ps").status_code == 401
        ps = client.get("/api/ps", headers={"Authorization": "Bearer k"}).json()["models"]
        assert ps[0]["name"] == DEFAULT and ps[0]["expires_at"] > "2100"  # the served model stays
        body = {"model": DEFAULT, "messages": [{"role": "user", "content": "x"}], "stream": False}
        r = client.post("/api/chat", headers={"Authorization": "Bearer k"}, json=body)
        assert r.json()["message"]["content"] == DEFAULT_REPLY


def test_serve_process_answers_and_stops_on_ctrl_c(store) -> None:
    port = free_port()
    env = os.environ | {"LLAMARUN_HOME": str(store.root), "HF_HUB_OFFLINE": "1"}
    # SIGINT at its default in the child: a test run started as a shell's background job inherits it ignored.
    proc = subprocess.Popen([sys.executable, "-c", RUN_SERVE, "serve", "--port", str(port), "--log-level",
                             "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the server did not answer within 60 s"
                time.sleep(0.1)
        assert health.json() == {"status": "ok", "models_loaded": 0}
        tags = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=10).json()
        assert [m["name"] for m in tags["models"]] == [DEFAULT]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"serving on http://127.0.0.1:{port}" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_server_starts_without_torch(store) -> None:
    code = ("import sys; from fastapi.testclient import TestClient; from llamarun.cli import serve_cmd; "
            "import argparse; p = argparse.ArgumentParser(); serve_cmd.register(p.add_subparsers()); "
            "a = p.parse_args(['serve']); app = serve_cmd.build_app(a, 300.0); "
            "c = TestClient(app, base_url='http://localhost').__enter__(); "
            "assert c.get('/api/tags').status_code == 200; "
            "print('torch' in sys.modules)")
    env = os.environ | {"LLAMARUN_HOME": str(store.root)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"  # torch comes with the first model load, not before
