"""A created model's settings applied to a ChatRequest: under what the client set, in Ollama's order; and `LLM`
over a created entry renders its system prompt and template on a real tiny model."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.chat.messages import Message
from llamarun.llm.chat_service import ChatRequest
from llamarun.llm.model_settings import apply_settings, store_settings
from llamarun.sampling.params import SamplingParams
from llamarun.store.create import create_from_model
from llamarun.store.home import ModelStore
from llamarun.store.model_defaults import ModelDefaults

SETTINGS = ModelDefaults(system="sys", parameters={"temperature": 0.2, "top_k": 3, "stop": ["X"], "num_ctx": 128},
                         messages=({"role": "user", "content": "u0"}, {"role": "assistant", "content": "a0"}))


def test_parameters_fill_only_what_the_client_left_unset() -> None:
    req = ChatRequest("m", messages=[Message("user", "q")], params=SamplingParams(temperature=0.9), given=frozenset(
        {"temperature"}))
    out = apply_settings(req, SETTINGS)
    assert (out.params.temperature, out.params.top_k, out.params.stop, out.num_ctx) == (0.9, 3, ("X",), 128)
    assert [(m.role, m.content) for m in out.messages] == [("system", "sys"), ("user", "u0"), ("assistant", "a0"),
                                                           ("user", "q")]
    assert req.params.top_k == 40 and len(req.messages) == 1  # the client's request is not changed in place
    python_api = apply_settings(ChatRequest("m", prompts=["raw"], num_ctx=64), SETTINGS)  # given None: all set
    assert python_api.params == SamplingParams() and python_api.num_ctx == 64 and python_api.messages is None


def test_a_conversation_with_its_own_system_message_keeps_it() -> None:
    req = ChatRequest("m", messages=[Message("system", "mine"), Message("user", "q")], given=frozenset())
    assert [m.content for m in apply_settings(req, SETTINGS).messages] == ["u0", "a0", "mine", "q"]


def test_llm_runs_a_created_model_with_its_system_prompt_and_template(tmp_path, monkeypatch) -> None:
    from llamarun.api import LLM

    spec = TinySpec()
    folder = add_byte_tokenizer(write_hf(spec, make_weights(spec, seed=3)[0], tmp_path / "hf"))
    store = ModelStore(tmp_path / "home")
    monkeypatch.setenv("LLAMARUN_HOME", str(store.root))
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}="
    create_from_model(store, "made", "latest", None, folder, ModelDefaults(system="S!", template=template))
    assert store_settings(store)("made").system == "S!" and store_settings(store)("/no/such/path") is None
    llm = LLM("made", context_length=64, dtype=torch.float32)
    try:
        it = llm.stream_chat([{"role": "user", "content": "hi"}], SamplingParams.greedy(max_tokens=1))
        it.result()
        assert it.reply.prompts[0] == llm.prompt_ids("<system>S!<user>hi=")
    finally:
        llm.close()


@pytest.mark.parametrize("name", ["made:latest", "made"])
def test_store_lookup_finds_created_names(tmp_path, name) -> None:
    store = ModelStore(tmp_path)
    store.tmp.mkdir(parents=True)
    from llamarun.store.home import Manifest

    with store.staging() as staged:
        store.commit(staged, Manifest("made", "latest", "test", "gguf", "x", defaults={"system": "hey"}))
    assert store_settings(store)(name) == ModelDefaults(system="hey")
    assert store_settings(store)("other") is None and store_settings(store)("../bad") is None
