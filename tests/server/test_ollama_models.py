"""Ollama's model endpoints on a real store with the default model: tags, show, ps, pull, delete, version."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from conftest import DEFAULT
from fastapi.testclient import TestClient

from llamarun import __version__
from llamarun.errors import DownloadError
from llamarun.server import ModelManager, create_app
from llamarun.store.default_model import install_default_model_from
from llamarun.store.describe import describe_model
from llamarun.store.home import ModelStore, sha256_file

pytestmark = pytest.mark.timeout(60)


def test_tags_lists_the_store(client: TestClient, store: ModelStore, default_gguf: Path) -> None:
    models = client.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == [DEFAULT]
    m = models[0]
    manifest = store.get("smollm2", "135m")
    assert m["model"] == DEFAULT and m["size"] == manifest.size == default_gguf.stat().st_size
    assert m["digest"] == manifest.files[0].sha256 == sha256_file(default_gguf)
    assert m["details"] == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "134.5M", "quantization_level": "Q4_1"}
    modified = dt.datetime.fromisoformat(m["modified_at"]).timestamp()
    assert abs(modified - manifest.pulled_at) < 1e-3


def test_show_describes_the_model(client: TestClient, default_gguf: Path) -> None:
    info = describe_model(default_gguf)
    for body in ({"model": "smollm2"}, {"name": DEFAULT}):  # "name" is what older clients send
        r = client.post("/api/show", json=body)
        assert r.status_code == 200, r.text
        show = r.json()
        assert show["template"] == info.chat_template and show["template"]
        assert show["license"] == info.license
        assert show["model_info"]["general.architecture"] == "llama"
        assert show["model_info"]["general.parameter_count"] == info.parameters
        assert show["model_info"]["llama.context_length"] == 8192
        assert show["model_info"]["llama.block_count"] == 30
        assert show["model_info"]["llama.attention.head_count_kv"] == 3
        assert show["details"]["quantization_level"] == "Q4_1"
        assert show["modelfile"].splitlines()[3].startswith("FROM ") and "completion" in show["capabilities"]


def test_ps_reports_loaded_models(client: TestClient, loader) -> None:
    assert client.get("/api/ps").json() == {"models": []}
    client.post("/api/chat", json={"model": DEFAULT, "messages": [{"role": "user", "content": "x"}],
                                   "stream": False, "options": {"num_ctx": 256}, "keep_alive": "10m"})
    client.post("/api/generate", json={"model": "fake-other", "prompt": "x", "stream": False})
    ps = {m["name"]: m for m in client.get("/api/ps").json()["models"]}
    assert set(ps) == {DEFAULT, "fake-other"}
    m = ps[DEFAULT]
    assert m["context_length"] == 256 and m["size_vram"] == 0
    assert m["size"] == loader.last(DEFAULT).memory_bytes
    assert m["details"]["format"] == "gguf" and len(m["digest"]) == 64
    left = dt.datetime.fromisoformat(m["expires_at"]).timestamp() - time.time()
    assert 590 < left <= 600


def test_version(client: TestClient) -> None:
    assert client.get("/api/version").json() == {"version": __version__}


def test_pull_streams_progress_and_ends_in_success(client: TestClient) -> None:
    # The default model is already in the store: pull_model verifies it and returns, offline.
    with client.stream("POST", "/api/pull", json={"model": DEFAULT}) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[1]["digest"].startswith("sha256:") and lines[1]["completed"] == lines[1]["total"] > 0
    assert lines[-1] == {"status": "success"}
    r = client.post("/api/pull", json={"model": DEFAULT, "stream": False})
    assert r.status_code == 200 and r.json() == {"status": "success"}
    r = client.post("/api/pull", json={"model": "./local.gguf"})  # local paths need no pull
    assert r.status_code == 404 and "local path" in r.json()["error"]


def test_pull_failure_after_start_is_an_error_line(make_app) -> None:
    def failing_pull(name: str, *, store=None):
        raise DownloadError(f"could not download {name}", "check the network")

    with TestClient(make_app(pull=failing_pull)) as client:
        with client.stream("POST", "/api/pull", json={"model": "llama3.2:1b"}) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines == [{"status": "pulling manifest"},
                         {"error": "could not download llama3.2:1b (check the network)"}]
        r = client.post("/api/pull", json={"model": "llama3.2:1b", "stream": False})
        assert r.status_code == 400 and "could not download" in r.json()["error"]


def test_delete_unloads_and_removes(tmp_path: Path, default_gguf: Path, loader) -> None:
    own = ModelStore(tmp_path / "home")
    install_default_model_from(default_gguf, own)
    from llamarun.server.store_info import resolve

    manager = ModelManager(loader, resolve=lambda name: resolve(name, own).name)
    with TestClient(create_app(manager, store=own)) as client:
        assert client.post("/api/generate", json={"model": DEFAULT}).json()["done_reason"] == "load"
        r = client.request("DELETE", "/api/delete", json={"model": "smollm2"})
        assert r.status_code == 200
        assert own.get("smollm2", "135m") is None and default_gguf.exists()  # a link went, not the file
        assert client.get("/api/tags").json() == {"models": []}
        assert client.get("/api/ps").json() == {"models": []} and loader.last().shut_down
        r = client.request("DELETE", "/api/delete", json={"model": "smollm2"})
        assert r.status_code == 404


@pytest.mark.parametrize("name", ["~no-such-user-here/x", "bad\u0000name"])
def test_pull_of_names_no_file_system_holds(client: TestClient, name: str) -> None:
    r = client.post("/api/pull", json={"model": name})
    assert r.status_code == 404 and list(r.json()) == ["error"]
