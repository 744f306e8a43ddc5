"""/api/create and /api/blobs through the official ollama client: created models run with their settings,
list, show, copy and delete; uploads are checked by digest; a failed creation leaves nothing behind."""

from __future__ import annotations

import hashlib
import json

import httpx
import ollama
import pytest
from conftest import DEFAULT, live_server

from llamarun.server import ModelManager, create_app
from llamarun.server.store_info import resolve
from llamarun.store.default_model import install_default_model_from
from llamarun.store.home import ModelStore


@pytest.fixture
def home(tmp_path, default_gguf):
    store = ModelStore(tmp_path / "home")
    install_default_model_from(default_gguf, store)
    return store


@pytest.fixture
def base(home, loader):
    app = create_app(ModelManager(loader, resolve=lambda name: resolve(name, home).name), store=home)
    with live_server(app) as url:
        yield url


def _leftovers(store: ModelStore) -> list[str]:
    return [p.name for p in (store.root / "tmp").glob("*")] if (store.root / "tmp").exists() else []


def test_create_from_a_model_runs_with_its_settings_then_copies_and_deletes(home, base, loader) -> None:
    client = ollama.Client(host=base)
    out = client.create(model="terse", from_=DEFAULT, system="You are terse.",
                        parameters={"temperature": 0.2, "num_predict": 5, "stop": ["END"]},
                        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert out.status == "success"
    assert "terse:latest" in {m.model for m in client.list().models}
    entry, original = home.get("terse", "latest"), home.get(*DEFAULT.split(":"))
    assert entry.model_path.stat().st_ino == original.model_path.stat().st_ino  # weights shared, not copied

    client.chat(model="terse", messages=[{"role": "user", "content": "Name a colour"}])
    fake = loader.last("terse:latest")
    seen = [(m["role"], m["content"]) for m in fake.messages_seen[-1][0]]
    assert seen == [("system", "You are terse."), ("user", "hi"), ("assistant", "yo"), ("user", "Name a colour")]
    params = fake.calls[-1].params
    assert (params.temperature, params.max_tokens, params.stop) == (0.2, 5, ("END",))

    # What the client sets wins over the model's settings; its own system message replaces the model's.
    client.chat(model="terse", messages=[{"role": "system", "content": "Be loud."}, {"role": "user", "content": "x"}],
                options={"temperature": 0.9})
    assert fake.calls[-1].params.temperature == 0.9 and fake.calls[-1].params.max_tokens == 5
    assert [m["content"] for m in fake.messages_seen[-1][0]][:3] == ["hi", "yo", "Be loud."]

    raw = httpx.post(f"{base}/api/show", json={"model": "terse"}).json()
    assert raw["system"] == "You are terse."
    assert "temperature                    0.2" in raw["parameters"] and 'stop                           "END"' in raw[
        "parameters"]
    assert "SYSTEM" in raw["modelfile"] and 'PARAMETER stop "END"' in raw["modelfile"]

    # A model made from the created one keeps what it does not change.
    client.create(model="terse2", from_="terse", parameters={"temperature": 0.5})
    raw2 = httpx.post(f"{base}/api/show", json={"model": "terse2"}).json()
    assert raw2["system"] == "You are terse." and "temperature                    0.5" in raw2["parameters"]

    client.copy("terse", "terse-copy")
    client.chat(model="terse-copy", messages=[{"role": "user", "content": "q"}])
    assert loader.last("terse-copy:latest").messages_seen[-1][0][0]["content"] == "You are terse."
    for name in ("terse", "terse2", "terse-copy"):
        client.delete(name)
    assert {m.model for m in client.list().models} == {DEFAULT}
    assert original.model_path.exists() and not _leftovers(home)


def test_openai_requests_get_the_created_models_parameters_unless_they_set_them(home, base, loader) -> None:
    import openai

    ollama.Client(host=base).create(model="cool", from_=DEFAULT, parameters={"temperature": 0.1, "top_k": 7})
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    client.chat.completions.create(model="cool", messages=[{"role": "user", "content": "hi"}])
    params = loader.last("cool:latest").calls[-1].params
    assert (params.temperature, params.top_k) == (0.1, 7)
    client.chat.completions.create(model="cool", messages=[{"role": "user", "content": "hi"}], temperature=1.5)
    assert loader.last("cool:latest").calls[-1].params.temperature == 1.5


def test_create_from_an_uploaded_gguf_blob(home, base, loader, default_gguf) -> None:
    client = ollama.Client(host=base)
    digest = client.create_blob(default_gguf)
    assert httpx.head(f"{base}/api/blobs/{digest}").status_code == 200
    statuses = [r.status for r in client.create(model="fromblob:v1", files={"smol.gguf": digest},
                                                template="{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                                                         "{% endfor %}>", stream=True)]
    assert statuses[0] == f"using existing layer {digest}" and statuses[-1] == "success"
    entry = home.get("fromblob", "v1")
    assert entry.format == "gguf" and entry.files[0].sha256 == digest.removeprefix("sha256:")
    blob = home.root / "blobs" / digest.replace(":", "-")
    assert entry.model_path.stat().st_ino == blob.stat().st_ino  # hard-linked, not copied
    assert next(m for m in client.list().models if m.model == "fromblob:v1").details.format == "gguf"

    client.chat(model="fromblob:v1", messages=[{"role": "user", "content": "hey"}])
    prompt = loader.last("fromblob:v1").calls[-1].prompt_ids
    assert bytes(t for t in prompt if t < 256).decode() == "[user]hey>"  # the created model's template
    client.delete("fromblob:v1")
    assert blob.exists() and not _leftovers(home)


def test_create_from_uploaded_safetensors_files(home, base, loader, tmp_path) -> None:
    from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

    spec = TinySpec()
    folder = add_byte_tokenizer(write_hf(spec, make_weights(spec, seed=1)[0], tmp_path / "hf"))
    client = ollama.Client(host=base)
    files = {p.name: client.create_blob(p) for p in sorted(folder.iterdir()) if p.is_file()}
    assert "config.json" in files and any(n.endswith(".safetensors") for n in files)
    client.create(model="tiny-st", files=files, system="tiny")
    entry = home.get("tiny-st", "latest")
    assert entry.format == "hf" and sorted(p.name for p in entry.model_path.iterdir()) == sorted(files)
    shown = httpx.post(f"{base}/api/show", json={"model": "tiny-st"}).json()
    assert shown["details"]["format"] == "hf" and shown["system"] == "tiny"
    client.chat(model="tiny-st", messages=[{"role": "user", "content": "x"}])
    assert loader.last("tiny-st:latest").messages_seen[-1][0][0]["content"] == "tiny"
    no_config = {n: d for n, d in files.items() if n != "config.json"}
    assert _create_error(base, {"model": "broken", "files": no_config}) == (400, "not a model llamarun reads")


def test_blob_upload_checks_the_digest_and_leaves_nothing_on_mismatch(home, base) -> None:
    data = b"not a model" * 1000
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    assert httpx.head(f"{base}/api/blobs/{good}").status_code == 404
    r = httpx.post(f"{base}/api/blobs/{wrong}", content=data)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    assert httpx.head(f"{base}/api/blobs/{wrong}").status_code == 404 and not _leftovers(home)
    assert httpx.post(f"{base}/api/blobs/{good}", content=data).status_code == 201
    assert httpx.head(f"{base}/api/blobs/{good}").status_code == 200
    assert (home.root / "blobs" / good.replace(":", "-")).read_bytes() == data
    assert httpx.head(f"{base}/api/blobs/sha256:abc").status_code == 400
    assert httpx.post(f"{base}/api/blobs/md5:{'0' * 64}", content=b"x").status_code == 400
    # Bytes that are no model: the creation is refused and no entry appears.
    err = _create_error(base, {"model": "junk", "files": {"junk.gguf": good}})
    assert err == (400, "not a model llamarun reads")
    assert home.get("junk", "latest") is None and not _leftovers(home)


def _create_error(base: str, body: dict) -> tuple[int, str]:
    r = httpx.post(f"{base}/api/create", json={**body, "stream": False})
    message = r.json().get("error", "")
    for key in ("not a model llamarun reads", "not supported", "Go template", "unknown or unsupported",
                "has not been uploaded", "not both", "nothing to create from", "invalid model name", "not found",
                "must be float", "below"):
        if key in message:
            return r.status_code, key
    return r.status_code, message


def test_bad_create_requests_are_refused_before_anything_is_made(home, base) -> None:
    missing = "sha256:" + "0" * 64
    cases = [
        ({"model": "m", "from": DEFAULT, "quantize": "q4_K_M"}, (400, "not supported")),
        ({"model": "m", "from": DEFAULT, "template": "{{ .System }} {{ .Prompt }}"}, (400, "Go template")),
        ({"model": "m", "from": DEFAULT, "parameters": {"mirostat": 1}}, (400, "unknown or unsupported")),
        ({"model": "m", "from": DEFAULT, "parameters": {"temperature": "hot"}}, (400, "must be float")),
        ({"model": "m", "from": DEFAULT, "parameters": {"num_ctx": 4}}, (400, "below")),
        ({"model": "m", "files": {"a.gguf": missing}}, (400, "has not been uploaded")),
        ({"model": "m", "from": DEFAULT, "files": {"a.gguf": missing}}, (400, "not both")),
        ({"model": "m"}, (400, "nothing to create from")),
        ({"model": "../up", "from": DEFAULT}, (400, "invalid model name")),
        ({"model": "m", "from": "no-such-model"}, (404, "not found")),
        ({"model": "m", "from": "/etc"}, (404, "not found")),  # a path outside --models-dir reads as unknown
    ]
    for body, expected in cases:
        assert _create_error(base, body) == expected, body
    assert [m.ref for m in home.list()] == [DEFAULT] and not _leftovers(home)


def test_legacy_modelfile_body_streams_ollamas_status_lines(home, base, loader) -> None:
    modelfile = f'''# a comment
FROM {DEFAULT}
PARAMETER temperature 0.3
PARAMETER stop "<|im_end|>"
PARAMETER stop STOP
SYSTEM """Answer in
two lines."""
MESSAGE user Hello there
'''
    with httpx.stream("POST", f"{base}/api/create", json={"name": "legacy", "modelfile": modelfile}) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1] == {"status": "success"} and any("system" in x.get("status", "") for x in lines)
    settings = home.get("legacy", "latest").defaults
    assert settings["system"] == "Answer in\ntwo lines."
    assert settings["parameters"] == {"temperature": 0.3, "stop": ["<|im_end|>", "STOP"]}
    assert settings["messages"] == [{"role": "user", "content": "Hello there"}]
    r = httpx.post(f"{base}/api/create", json={"model": "x", "modelfile": "PARAMETER top_k 3\n", "stream": False})
    assert r.status_code == 400 and "no FROM" in r.json()["error"]
