"""Hugging Face sources without the network: a fake HF cache on disk, and the hub's real exceptions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import errors as hub_errors
from safetensors.numpy import save

from llamarun.errors import DownloadError
from llamarun.store.describe import describe_model
from llamarun.store.home import ModelStore
from llamarun.store.resolve import pull_model, resolve_model

REV = "0123456789abcdef0123456789abcdef01234567"
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 16,
          "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
          "max_position_embeddings": 4096, "torch_dtype": "bfloat16"}


def add_to_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Lay files out as huggingface_hub does: blobs named by hash, snapshot symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REV
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / digest)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    return snapshot


def hf_files(config: dict = CONFIG) -> dict[str, bytes]:
    return {"config.json": json.dumps(config).encode(),
            "model.safetensors": save({"model.norm.weight": np.ones(16, np.float32)}),
            "tokenizer_config.json": json.dumps({"chat_template": "{{ bos_token }}"}).encode()}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"cache": cache, "store": tmp_path / "home"}


def test_offline_pull_resolves_from_the_hf_cache(env: dict[str, Path]) -> None:
    snapshot = add_to_cache(env["cache"], "meta-llama/Llama-3.1-8B-Instruct", hf_files())
    store = ModelStore(env["store"])
    model = resolve_model("llama3.1:8b", store=store)
    assert model.path == snapshot and model.format == "hf"
    manifest = store.get("llama3.1", "8b")
    assert manifest.source == "hf:meta-llama/Llama-3.1-8B-Instruct"
    assert {f.path for f in manifest.files} == set(hf_files())
    blobs = {f.path: f.sha256 for f in manifest.files}  # sha256 known for free from blob names
    assert blobs["config.json"] == hashlib.sha256(hf_files()["config.json"]).hexdigest()
    assert manifest.size == sum(len(b) for b in hf_files().values())
    assert not any(env["store"].rglob("*.safetensors"))  # nothing copied into the store
    info = describe_model(model.path)
    assert info.quantization == "BF16" and info.chat_template == "{{ bos_token }}"
    assert resolve_model("llama3.1", store=store).path == snapshot  # alias llama3.1:latest


def test_not_pulled_but_cached_resolves_without_pull(env: dict[str, Path]) -> None:
    snapshot = add_to_cache(env["cache"], "meta-llama/Llama-3.2-1B-Instruct", hf_files())
    model = resolve_model("llama3.2:1b", pull=False, store=ModelStore(env["store"]))
    assert model.path == snapshot and ModelStore(env["store"]).list() == []


def test_single_gguf_file_and_mlx_repo_and_repo_ids(env: dict[str, Path]) -> None:
    add_to_cache(env["cache"], "bartowski/Llama-3.3-70B-Instruct-GGUF",
                 {"Llama-3.3-70B-Instruct-Q4_K_M.gguf": b"GGUF\x03\0\0\0" + b"\0" * 16})
    store = ModelStore(env["store"])
    m = pull_model("llama3.3:70b-q4_K_M", store=store)
    assert m.format == "gguf" and m.model_path.name == "Llama-3.3-70B-Instruct-Q4_K_M.gguf"
    mlx_cfg = CONFIG | {"quantization": {"group_size": 64, "bits": 4}}
    mlx = {"config.json": json.dumps(mlx_cfg).encode(),
           "model.safetensors": save({"l.weight": np.zeros((2, 8), np.uint32),
                                      "l.scales": np.ones((2, 1), np.float16),
                                      "l.biases": np.zeros((2, 1), np.float16)})}
    add_to_cache(env["cache"], "mlx-community/Llama-3.3-70B-Instruct-4bit", mlx)
    assert resolve_model("llama3.3:70b-mlx-4bit", store=store).format == "mlx"
    add_to_cache(env["cache"], "someone/tiny-llama", hf_files())
    model = resolve_model("someone/tiny-llama", store=store)
    assert (model.name, model.format) == ("someone/tiny-llama:latest", "hf")
    assert {x.ref for x in store.list()} == {"llama3.3:70b-q4_K_M", "llama3.3:70b-mlx-4bit",
                                             "someone/tiny-llama:latest"}


def test_offline_and_not_cached(env: dict[str, Path]) -> None:
    with pytest.raises(DownloadError, match="not in the Hugging Face cache") as err:
        pull_model("llama-guard3:1b", store=ModelStore(env["store"]))
    assert "HF_HUB_OFFLINE" in str(err.value)


def _response(status: int):
    try:
        import httpx2 as httpx
    except ImportError:  # older huggingface_hub versions use httpx
        import httpx
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))


def _online_raising(monkeypatch: pytest.MonkeyPatch, exc: Exception, seen: dict | None = None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def fake(*args, **kwargs):
        if seen is not None:
            seen.update(kwargs)
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)


def test_gated_repo_tells_how_to_get_access(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    _online_raising(monkeypatch, hub_errors.GatedRepoError("gated", response=_response(403)), seen)
    with pytest.raises(DownloadError) as err:
        pull_model("llama3.3:70b", store=ModelStore(env["store"]))
    msg = str(err.value)
    assert "https://huggingface.co/meta-llama/Llama-3.3-70B-Instruct" in msg and "HF_TOKEN" in msg
    assert seen["token"] == "hf_test_token" and seen["local_files_only"] is False
    assert "original/*" in seen["ignore_patterns"]


def test_repo_not_found(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _online_raising(monkeypatch, hub_errors.RepositoryNotFoundError("404", response=_response(404)))
    with pytest.raises(DownloadError, match="repo nobody/nothing was not found"):
        pull_model("nobody/nothing", store=ModelStore(env["store"]))


def test_network_down_and_nothing_cached(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _online_raising(monkeypatch, hub_errors.LocalEntryNotFoundError("connection error"))
    with pytest.raises(DownloadError, match="could not reach the Hugging Face Hub"):
        pull_model("llama3.2:1b", store=ModelStore(env["store"]))


def test_unexpected_network_failure_falls_back_to_the_cache(env: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = add_to_cache(env["cache"], "meta-llama/Llama-Guard-3-1B", hf_files())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    real = huggingface_hub.snapshot_download

    def flaky(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            raise ConnectionResetError("connection reset by peer")
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", flaky)
    assert pull_model("llama-guard3:1b", store=ModelStore(env["store"])).model_path == snapshot
