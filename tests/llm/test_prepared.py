"""Prepared CPU models in the llamarun home: the second load maps the first's built model, and nothing stale is used."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.llm import prepared
from llamarun.llm.loading import load_model
from llamarun.sampling.params import SamplingParams


def _greedy(lm, prompt: list[int], n: int = 8) -> list[int]:
    lm.engine.add_request(prompt, SamplingParams.greedy(max_tokens=n), stop_ids=(), request_id="g")
    out = []
    while lm.engine.has_unfinished:
        for o in lm.engine.step():
            out += [t.token_id for t in o.new_tokens]
    return out


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(prepared.ENV, raising=False)
    return tmp_path / "home"


def test_the_default_model_loads_from_its_prepared_copy_with_the_same_output(home, default_gguf, monkeypatch):
    built = load_model(str(default_gguf), context_length=256)
    entries = list((home / "prepared").glob("*.pt"))
    assert len(entries) == 1
    calls = []
    real_load = prepared.load
    monkeypatch.setattr(prepared, "load", lambda key: calls.append(key) or real_load(key))
    mapped = load_model(str(default_gguf), context_length=256)
    assert calls and mapped.engine is not built.engine
    prompt = built.tokenizer.encode("The capital of France is")
    assert _greedy(mapped, prompt) == _greedy(built, prompt)
    # The packed layers came back whole: every parameter and buffer (the CPU kernels' records too), bit for bit.
    a, b = built.engine.runner.model, mapped.engine.runner.model
    for name, tensor in [*a.named_parameters(), *a.named_buffers()]:
        assert torch.equal(tensor, b.get_parameter(name) if "." in name and name in dict(b.named_parameters())
                           else b.get_buffer(name)), name
    assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "MIN_CHECKPOINT_BYTES", 0)  # cache even a tiny checkpoint
    spec = TinySpec(llama3_rope=True)
    weights, _ = make_weights(spec, seed=4)
    return add_byte_tokenizer(write_hf(spec, weights, tmp_path / "hf"))


def test_a_changed_checkpoint_or_mode_is_built_again(home, tiny):
    load_model(str(tiny), context_length=64)
    load_model(str(tiny), context_length=64, weights="int8")
    assert len(list((home / "prepared").glob("*.pt"))) == 2  # one per weights mode
    weights = tiny / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert prepared.key_for(tiny, "exact", torch.float32) not in {p.stem for p in (home / "prepared").glob("*.pt")}


def test_off_writes_nothing(home, tiny, monkeypatch):
    monkeypatch.setenv(prepared.ENV, "off")
    load_model(str(tiny), context_length=64)
    assert not (home / "prepared").exists()


def test_an_unreadable_entry_is_replaced_by_a_fresh_build(home, tiny, caplog):
    first = load_model(str(tiny), context_length=64)
    (entry,) = (home / "prepared").glob("*.pt")
    entry.write_bytes(b"not a pickle")
    again = load_model(str(tiny), context_length=64)
    assert "unreadable" in caplog.text
    assert entry.stat().st_size > 100  # written again by the rebuild
    assert _greedy(again, [5, 6, 7]) == _greedy(first, [5, 6, 7])


def test_only_the_most_recently_used_entries_stay(home, monkeypatch):
    monkeypatch.setattr(prepared, "KEEP", 2)
    model = torch.nn.Linear(4, 4)
    for key in ("a", "b", "c"):
        prepared.save(key, model)
        os.utime(home / "prepared" / f"{key}.pt", (0, {"a": 1, "b": 2, "c": 3}[key]))
    prepared.save("d", model)
    assert {p.stem for p in (home / "prepared").glob("*.pt")} == {"c", "d"}


def test_a_model_that_cannot_be_saved_only_costs_the_cache(home, caplog):
    import logging

    model = torch.nn.Linear(2, 2)
    model.hook = lambda: None  # a lambda does not pickle
    with caplog.at_level(logging.INFO, logger="llamarun.llm.prepared"):
        prepared.save("x", model)  # no exception reaches the load
    assert "not saved" in caplog.text
    assert not list((home / "prepared").glob("*"))  # and no temporary file is left behind
