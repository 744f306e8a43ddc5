"""How LlamaGuard gets its model (a path leased through the server's real ModelManager), long inputs, and
the errors a guard that cannot run must raise."""

from __future__ import annotations

import asyncio

import pytest
from tiny_guard_model import UNSAFE, write_tiny_guard

from llamarun.errors import LlamarunError
from llamarun.safety.llama_guard import LlamaGuard, build_llama_guard
from llamarun.safety.llama_guard.fit import fit_prompt
from llamarun.safety.llama_guard.model_handle import LoadedModel
from llamarun.safety.llama_guard.prompt import PromptStyle, Turn
from llamarun.safety.verdict import Message, Subject
from llamarun.sampling.grammar_spec import GrammarSpec
from llamarun.server.model_manager import ModelManager, default_loader

FORCED = GrammarSpec("choice", ["\n\nunsafe\nS1"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_guard(tmp_path_factory.mktemp("guard") / "g", style="1b", lean=UNSAFE, boost=2.0)


def test_a_path_leased_through_the_model_manager(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path / "home"))

    async def main():
        # Paths are allowed only inside --models-dir folders (server/local_paths.py); the operator names this one.
        manager = ModelManager(default_loader(max_kv_tokens=4096), context_length=1024,
                               models_dirs=[str(folder.parent)])
        try:
            guard = build_llama_guard(str(folder), source=manager, excluded=["S6"], threshold=0.5)
            guard.grammar = FORCED  # force the verdict text; the score stays the model's own
            assert await guard.warm_up() == "llama-guard-3-1b"
            assert len(manager.loaded()) == 1
            verdicts = await asyncio.gather(*(guard.check(Subject("input", f"text {i}")) for i in range(3)))
            active = [m.active for m in manager.loaded()]
            return verdicts, active
        finally:
            await manager.close()

    verdicts, active = asyncio.run(main())
    assert all(not v.safe and v.categories == ("S1",) and v.score > 0.5 for v in verdicts)
    assert active == [0]  # every check gave its lease back


def test_long_input_keeps_both_ends_within_the_context(folder):
    from llamarun.api import AsyncLLM

    llm = AsyncLLM(str(folder), context_length=512, max_kv_tokens=2048)
    try:
        guard = LlamaGuard(llm, grammar=FORCED)
        history = tuple(Message("user", "old " * 50) for _ in range(3))
        text = "BEGINNING " + "filler words here " * 400 + " THE END"
        v = asyncio.run(guard.check(Subject("input", text, history)))
        assert v.extra["trimmed_input"] and v.extra["prompt_tokens"] <= 512 - 48
        assert not v.safe and v.categories == ("S1",)
        short = asyncio.run(guard.check(Subject("input", "short question")))
        assert not short.extra["trimmed_input"]
        ids, trimmed = fit_prompt(llm, [Turn("User", text)], {"S1": "Violent Crimes."}, PromptStyle.GUARD_1B, 48)
        shown = llm.tokenizer.decode(ids)
        assert trimmed and "BEGINNING" in shown and "THE END" in shown and "[...]" in shown
        assert len(ids) <= 512 - 48
    finally:
        llm.shutdown()


class _Broken:
    """A ServedModel whose engine fails at the first step."""

    def __init__(self, served) -> None:
        self._served = served
        self.name, self.tokenizer, self.template = served.name, served.tokenizer, served.template
        self.context_length = served.context_length

    def tokens(self, prompt_ids, params, request_id):
        class Stream:
            def __aiter__(self):
                return self

            async def __anext__(self):
                raise RuntimeError("CUDA error: device lost")

            async def cancel(self):
                return None

        return Stream()


def test_a_guard_that_cannot_run_raises_a_llamarun_error(folder):
    from llamarun.api import AsyncLLM

    llm = AsyncLLM(str(folder), context_length=256, max_kv_tokens=1024)
    try:
        guard = LlamaGuard(LoadedModel(_Broken(llm)))  # type: ignore[arg-type]
        with pytest.raises(LlamarunError, match="could not judge"):
            asyncio.run(guard.check(Subject("input", "hello")))
    finally:
        llm.shutdown()


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_bad_threshold(threshold, folder):
    with pytest.raises(LlamarunError, match="threshold"):
        build_llama_guard(str(folder), source=None, threshold=threshold)  # type: ignore[arg-type]


def test_bad_exclusions_fail_at_construction(folder):
    with pytest.raises(LlamarunError, match="S99"):
        build_llama_guard(str(folder), source=None, excluded=["S99"])  # type: ignore[arg-type]
    with pytest.raises(LlamarunError, match="every"):
        LlamaGuard(None, categories={"S1": "x"}, excluded=["S1"])  # type: ignore[arg-type]


def test_a_server_loads_its_llama_guard_at_start_up_and_a_broken_one_stops_the_start(folder, tmp_path, monkeypatch):
    """The first request must not pay the guard's load, and a guard that cannot load must not leave a server up
    that answers every request with a 503."""
    from fastapi.testclient import TestClient

    from llamarun.safety.factory import build_pipeline
    from llamarun.safety.settings import GuardSettings
    from llamarun.safety.verdict import GuardMode
    from llamarun.server import create_app
    from llamarun.server.model_manager import FOREVER
    from llamarun.store.home import ModelStore

    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path / "home"))
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # in an allowed folder, but no model

    def app(guard: str):
        manager = ModelManager(default_loader(max_kv_tokens=4096), context_length=1024,
                               models_dirs=[str(folder.parent), str(broken.parent)])
        settings = GuardSettings(llama_guard=guard, llama_guard_mode=GuardMode.WARN,
                                 language_policy=GuardMode.OFF)
        guards = build_pipeline(settings, source=manager, keep_alive=FOREVER)
        return manager, create_app(manager, store=ModelStore(tmp_path / "home"), guards=guards)

    manager, good = app(str(folder))
    with TestClient(good):
        assert [m.name for m in manager.loaded()] == [str(folder)]  # loaded before any request came
    _, bad = app(str(broken))
    with pytest.raises(LlamarunError), TestClient(bad):
        pass
