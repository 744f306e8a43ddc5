"""The guard flags reach the server and `run`: serve builds the pipeline with the model manager as the source
of Llama Guard's model, `run` puts the guards on its chat service, and bad flags stop both before any load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fake_guards import UNSAFE, MarkerGuard
from fake_llm import FakeLoader
from fastapi.testclient import TestClient

from llamarun.cli import serve_cmd
from llamarun.cli.guard_flags import attach_run_guards, guard_note
from llamarun.cli.main import build_parser, main
from llamarun.safety import factory
from llamarun.safety.report import GuardReport
from llamarun.safety.screening import RequestGuard
from llamarun.server.model_manager import FOREVER


@pytest.fixture
def fake_llama_guard(monkeypatch):
    """The factory's Llama Guard builder replaced by a marker guard; records the context it was given."""
    seen = {}

    def build(settings, ctx):
        seen.update(model=settings.llama_guard, source=ctx.source, keep_alive=ctx.keep_alive)
        return MarkerGuard(dict(UNSAFE), name="llama_guard")

    _, mode_of, flag = factory.BUILDERS["llama_guard"]
    monkeypatch.setitem(factory.BUILDERS, "llama_guard", (build, mode_of, flag))
    return seen


def test_serve_builds_the_guards_on_its_model_manager(tmp_path, monkeypatch, fake_llama_guard) -> None:
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path))
    args = build_parser().parse_args(["serve", "--guard", "llama-guard3:1b", "--guard-mode", "warn",
                                      "--language-policy", "off", "--guard-stream-every", "4"])
    app = serve_cmd.build_app(args, serve_cmd.check_args(args), loader=FakeLoader())
    assert app.state.guards.describe()[0] | {"kinds": None} == {"guard": "llama_guard", "mode": "warn", "kinds": None}
    assert fake_llama_guard == {"model": "llama-guard3:1b", "source": app.state.manager, "keep_alive": FOREVER}
    assert app.state.guards.stream_every == 4
    with TestClient(app, base_url="http://127.0.0.1:11434") as client:
        body = {"model": "fake-x", "messages": [{"role": "user", "content": "bomb"}], "stream": False}
        monkeypatch.setattr(app.state.manager, "resolve", lambda name: name)
        out = client.post("/api/chat", json=body).json()
        assert out["done_reason"] == "stop" and out["guard"]["action"] == "warn"


def test_serve_without_guard_flags_has_at_most_the_automatic_language_policy(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path))
    args = build_parser().parse_args(["serve"])
    app = serve_cmd.build_app(args, serve_cmd.check_args(args), loader=FakeLoader())
    guards = app.state.guards
    assert guards is None or [(d["guard"], d["mode"]) for d in guards.describe()] == [("language", "warn")]


@pytest.mark.parametrize("argv", [["serve", "--guard-mode", "warn"], ["run", "m", "hi", "--guard-exclude", "S99"],
                                  ["serve", "--code-shield", "sometimes"]])
def test_bad_guard_flags_exit_with_one_line(argv, capsys) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_run_puts_the_guards_on_its_chat_service(fake_llama_guard, monkeypatch) -> None:
    class FakeAsyncLLM:
        def __init__(self, name, **kwargs):
            self.name, self.kwargs = name, kwargs

    import llamarun.llm.async_llm

    monkeypatch.setattr(llamarun.llm.async_llm, "AsyncLLM", FakeAsyncLLM)
    llm = SimpleNamespace(service=SimpleNamespace(guard=None))
    args = build_parser().parse_args(["run", "m", "hi", "--guard", "llama-guard3:1b", "--language-policy", "off",
                                      "--device", "cpu"])
    guard_model = attach_run_guards(args, llm)
    assert isinstance(guard_model, FakeAsyncLLM) and guard_model.name == "llama-guard3:1b"
    assert guard_model.kwargs["device"] == "cpu"
    assert isinstance(llm.service.guard, RequestGuard)
    assert fake_llama_guard["source"].lease.served is guard_model  # the guard leases the model loaded here


def test_run_notes_what_the_guards_found() -> None:
    import asyncio

    from fake_guards import pipeline

    p = pipeline((MarkerGuard(dict(UNSAFE), name="llama_guard"), "warn"))
    from llamarun.safety.verdict import Subject

    report = GuardReport(input=asyncio.run(p.check([Subject("input", "a bomb")])))
    assert guard_note(SimpleNamespace(guard=report)) == "[guard warning] llama_guard on the input: S9"
    assert guard_note(SimpleNamespace(guard=GuardReport())) is None
    assert guard_note(SimpleNamespace(guard=None)) is None
