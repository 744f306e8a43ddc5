"""Embeddings on a tiny random checkpoint: equal to Transformers' mean-pooled hidden states, batch equal
to one by one, unit length, truncation, dimensions, pooling named by the checkpoint, and clear errors."""

from __future__ import annotations

import asyncio
import json
import math
import shutil

import pytest
import torch
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.api import LLM
from llamarun.errors import RequestError
from llamarun.llm.embed_inputs import MAX_INPUTS
from llamarun.llm.embeddings import checkpoint_pooling

TEXTS = ["hello there", "the theme is in the hills", "tiny", "a much longer text about the weather in the hills"]
CONTEXT = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    spec = TinySpec()
    weights, _ = make_weights(spec, seed=11)
    return str(add_byte_tokenizer(write_hf(spec, weights, tmp_path_factory.mktemp("emb") / "hf")))


@pytest.fixture(scope="module")
def llm(tiny):
    model = LLM(tiny, context_length=CONTEXT, dtype=torch.float32)
    yield model
    model.close()


@pytest.fixture(scope="module")
def reference(tiny):
    from transformers import LlamaForCausalLM

    # Its LlamaModel: loading LlamaModel itself from a causal-LM folder does not map every weight.
    return LlamaForCausalLM.from_pretrained(tiny, torch_dtype=torch.float32).eval().model


def reference_embedding(reference, ids: list[int], pooling: str = "mean") -> torch.Tensor:
    with torch.no_grad():
        states = reference(torch.tensor([ids])).last_hidden_state[0]  # [tokens, hidden]
    vec = states[-1] if pooling == "last" else states.mean(dim=0)
    return vec / vec.norm()


def test_equals_transformers_mean_pool(llm, reference) -> None:
    got = llm.embed(TEXTS)
    assert len(got) == len(TEXTS)
    for text, vec in zip(TEXTS, got, strict=True):
        want = reference_embedding(reference, llm.prompt_ids(text))
        assert len(vec) == llm.config.hidden_size
        torch.testing.assert_close(torch.tensor(vec), want, atol=1e-4, rtol=1e-4)


def test_batch_equals_one_by_one_and_unit_length(llm) -> None:
    batch = llm.embed(TEXTS)
    singles = [llm.embed([t])[0] for t in TEXTS]
    assert batch == singles
    for vec in batch:
        assert math.isclose(math.fsum(x * x for x in vec), 1.0, rel_tol=1e-5)
    assert batch[0] != batch[1]  # different texts, different vectors


def test_token_ids_equal_text(llm) -> None:
    text = TEXTS[1]
    assert llm.embed([llm.prompt_ids(text)]) == llm.embed([text])


def test_long_prompt_runs_in_chunks(tiny, reference, monkeypatch) -> None:
    from llamarun.llm import embeddings

    monkeypatch.setattr(embeddings, "CHUNK_TOKENS", 7)  # several chunks over the throwaway cache
    model = LLM(tiny, context_length=CONTEXT, dtype=torch.float32)
    try:
        ids = model.prompt_ids(TEXTS[3])
        assert len(ids) > 2 * 7
        torch.testing.assert_close(torch.tensor(model.embed([ids])[0]), reference_embedding(reference, ids),
                                   atol=1e-4, rtol=1e-4)
    finally:
        model.close()


def test_truncate_cuts_to_the_context_and_false_refuses(llm) -> None:
    long_ids = (llm.prompt_ids(TEXTS[3]) * 4)[:CONTEXT + 10]
    assert llm.embed([long_ids]) == llm.embed([long_ids[:CONTEXT]])
    with pytest.raises(RequestError) as err:
        llm.embed([long_ids], truncate=False)
    assert err.value.code == "context_length_exceeded" and str(CONTEXT) in str(err.value)
    assert llm.embed([long_ids[:CONTEXT]], truncate=False) == llm.embed([long_ids[:CONTEXT]])


def test_dimensions_keep_the_first_and_renormalize(llm) -> None:
    full = torch.tensor(llm.embed([TEXTS[0]])[0])
    short = torch.tensor(llm.embed([TEXTS[0]], dimensions=8)[0])
    assert short.shape == (8,)
    torch.testing.assert_close(short, full[:8] / full[:8].norm())
    assert len(llm.embed([TEXTS[0]], dimensions=llm.config.hidden_size)[0]) == llm.config.hidden_size
    for bad in (0, llm.config.hidden_size + 1):
        with pytest.raises(RequestError) as err:
            llm.embed([TEXTS[0]], dimensions=bad)
        assert err.value.param == "dimensions"


def test_bad_inputs_are_clear_errors(llm) -> None:
    with pytest.raises(RequestError, match="empty"):
        llm.embed([[]])
    with pytest.raises(RequestError, match="outside the vocabulary"):
        llm.embed([[1, 10**6]])
    with pytest.raises(RequestError, match=f"at most {MAX_INPUTS}"):
        llm.embed(["x"] * (MAX_INPUTS + 1))


def test_async_embed_runs_beside_generation(llm) -> None:
    """Embedding while a generation streams on the same engine changes neither."""
    from llamarun.sampling.params import SamplingParams

    params = SamplingParams.greedy(max_tokens=12)
    alone = llm.stream_ids(llm.prompt_ids("hello"), params).result().text
    expected = llm.embed(TEXTS)
    served = llm.served

    async def both():
        async def generate():
            return "".join([c.text async for c in served.stream(served.prompt_ids("hello"), params)])
        return await asyncio.gather(generate(), served.embed(TEXTS))

    text, vectors = llm._run(both())
    assert text == alone and vectors == expected


def test_last_token_pooling_when_the_checkpoint_names_it(tiny, reference, tmp_path) -> None:
    folder = tmp_path / "last"
    shutil.copytree(tiny, folder)
    assert checkpoint_pooling(folder) == "mean"
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    assert checkpoint_pooling(folder) == "last"
    model = LLM(str(folder), context_length=CONTEXT, dtype=torch.float32)
    try:
        ids = model.prompt_ids(TEXTS[1])
        torch.testing.assert_close(torch.tensor(model.embed([ids])[0]), reference_embedding(reference, ids, "last"),
                                   atol=1e-4, rtol=1e-4)
    finally:
        model.close()
