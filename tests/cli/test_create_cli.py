"""`llamarun create NAME -f Modelfile`: an entry with the Modelfile's settings, from a model or a relative path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llamarun.cli.main import main
from llamarun.store.default_model import install_default_model_from
from llamarun.store.home import ModelStore


@pytest.fixture
def store(tmp_path: Path, default_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> ModelStore:
    s = ModelStore(tmp_path / "home")
    install_default_model_from(default_gguf, s)
    monkeypatch.setenv("LLAMARUN_HOME", str(s.root))
    return s


def test_create_from_a_model_and_from_a_relative_path(store, tmp_path, default_gguf, capsys) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text('FROM smollm2:135m\nPARAMETER temperature 0.1\nSYSTEM """Be terse."""\n')
    assert main(["create", "terse", "-f", str(modelfile)]) == 0
    entry = store.get("terse", "latest")
    assert entry.defaults == {"system": "Be terse.", "parameters": {"temperature": 0.1}}
    assert entry.model_path.stat().st_ino == store.get("smollm2", "135m").model_path.stat().st_ino  # linked
    assert "created terse:latest from smollm2:135m" in capsys.readouterr().out

    os.link(default_gguf, tmp_path / "local.gguf")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Modelfile").write_text("FROM ../local.gguf\nMESSAGE user hi\n")
    assert main(["create", "local:v2", "-f", str(tmp_path / "sub" / "Modelfile")]) == 0
    entry = store.get("local", "v2")
    assert entry.model_path == (tmp_path / "local.gguf").resolve() and entry.format == "gguf"
    assert "keep that file" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "error"), [
    ("FROM smollm2:135m\nPARAMETER mirostat 2\n", "unknown or unsupported parameter 'mirostat'"),
    ("FROM smollm2:135m\nTEMPLATE {{ .Prompt }}\n", "Go template"),
    ("FROM no-such-model\n", "not found"),
    ("SYSTEM hi\n", "no FROM line"),
])
def test_bad_modelfiles_are_one_line_errors(store, tmp_path, capsys, text, error) -> None:
    (tmp_path / "Modelfile").write_text(text)
    assert main(["create", "x", "-f", str(tmp_path / "Modelfile")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and error in err
    assert store.get("x", "latest") is None
