"""Clients may not name checkpoint paths outside the operator's --models-dir folders, nor learn what a file holds."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from llamarun.errors import CheckpointError, ModelNotFoundError
from llamarun.loaders.detect import detect_format
from llamarun.server import ModelManager, create_app
from llamarun.server.local_paths import LocalPaths

HOSTILE = ["/etc/shadow", "/proc/self/environ", "~root/.bashrc", "../../etc/passwd", "/no/such/model.gguf", "/tmp"]


@pytest.mark.parametrize("name", HOSTILE)
def test_paths_outside_the_allowed_folders_read_like_unknown_models(name, loader) -> None:
    app = create_app(ModelManager(loader))  # the default store resolver: the policy applies
    with TestClient(app) as client:
        for path, body in (("/api/generate", {"model": name, "prompt": "x"}), ("/api/show", {"model": name}),
                           ("/v1/completions", {"model": name, "prompt": "x"})):
            r = client.post(path, json=body)
            text = r.text
            assert r.status_code == 404, (path, text)
            assert "among those this server loads from" in text and "x:0:0" not in text
    assert loader.instances == []  # nothing was loaded


def test_an_allowed_folder_and_the_served_model_may_be_named(tmp_path, default_gguf) -> None:
    allowed = tmp_path / "models"
    allowed.mkdir()
    shutil.copy(default_gguf, allowed / "m.gguf")
    paths = LocalPaths([allowed])
    paths.check(str(allowed / "m.gguf"))  # inside: fine
    paths.check("smollm2:135m")  # store names are not paths
    with pytest.raises(ModelNotFoundError):
        paths.check(str(allowed / ".." / "m.gguf"))  # .. cannot climb out
    with pytest.raises(ModelNotFoundError):
        paths.check(str(default_gguf))
    paths.trusted.add(str(default_gguf))  # what `serve MODEL` does for the operator's own choice
    paths.check(str(default_gguf))


def test_a_wrong_magic_error_never_echoes_the_file(tmp_path) -> None:
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(b"hunter2:x:0:0")
    with pytest.raises(CheckpointError) as err:
        detect_format(secret)
    assert "hunt" not in str(err.value) and "wrong magic" in str(err.value)
