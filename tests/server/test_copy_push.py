"""/api/copy gives a pulled model a second name that runs and deletes on its own; /api/push says it is not there."""

from __future__ import annotations

import ollama
import pytest
from conftest import DEFAULT, live_server
from fake_llm import DEFAULT_REPLY

from llamarun.server import ModelManager, create_app
from llamarun.server.store_info import resolve
from llamarun.store.home import ModelStore


def test_copy_run_delete_round_trip_with_the_official_client(tmp_path, default_gguf, loader) -> None:
    from llamarun.store.default_model import install_default_model_from

    store = ModelStore(tmp_path / "home")
    install_default_model_from(default_gguf, store)
    app = create_app(ModelManager(loader, resolve=lambda name: resolve(name, store).name), store=store)
    with live_server(app) as base:
        client = ollama.Client(host=base)
        client.copy(DEFAULT, "mine:v1")
        names = {m.model for m in client.list().models}
        assert {DEFAULT, "mine:v1"} <= names
        copied = store.get("mine", "v1")
        original = store.get(*DEFAULT.split(":"))
        assert copied.model_path.stat().st_ino == original.model_path.stat().st_ino  # shared, not duplicated
        assert client.generate(model="mine:v1", prompt="hi").response == DEFAULT_REPLY
        client.delete("mine:v1")
        assert store.get("mine", "v1") is None and original.model_path.exists()  # the source is untouched
        with pytest.raises(ollama.ResponseError) as err:
            client.copy("no-such-model", "other")
        assert err.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as err:
            client.copy(DEFAULT, "../escape")
        assert err.value.status_code == 400
        assert not (tmp_path / "escape").exists() and not any((store.root / "tmp").glob("pull-*"))
        with pytest.raises(ollama.ResponseError) as err:
            client.push(DEFAULT)
        assert err.value.status_code == 501 and "no model registry" in err.value.error
