"""GGUF `<arch>.pooling_type` picks the pooling (mean, cls, last), equal to Transformers' states pooled the same
way on the same weights; a reranker's `rank` pooling is refused; no key means mean."""

from __future__ import annotations

import gguf
import pytest
import torch
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_gguf, write_hf

from llamarun.api import LLM
from llamarun.errors import UnsupportedError
from llamarun.llm.embeddings import checkpoint_pooling

CONTEXT = 64
TEXT = "the theme is in the hills"


@pytest.fixture(scope="module")
def weights():
    return make_weights(TinySpec(), seed=5)[0]


@pytest.fixture(scope="module")
def reference(weights, tmp_path_factory):
    from transformers import LlamaForCausalLM

    folder = add_byte_tokenizer(write_hf(TinySpec(), weights, tmp_path_factory.mktemp("pool") / "hf"))
    return LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval().model


def _gguf(weights, folder, pooling: gguf.PoolingType | None):
    name = "none" if pooling is None else pooling.name.lower()
    extra = None if pooling is None else (lambda w: w.add_pooling_type(pooling))
    return write_gguf(TinySpec(), weights, folder / f"{name}.gguf", extra_keys=extra)


@pytest.mark.parametrize(("pooling", "expected"), [
    (None, "mean"), (gguf.PoolingType.MEAN, "mean"), (gguf.PoolingType.CLS, "cls"), (gguf.PoolingType.LAST, "last"),
])
def test_pooling_type_is_honoured(weights, reference, tmp_path, pooling, expected) -> None:
    path = _gguf(weights, tmp_path, pooling)
    assert checkpoint_pooling(path) == expected
    model = LLM(str(path), context_length=CONTEXT, dtype=torch.float32, weights="exact")
    try:
        ids = model.prompt_ids(TEXT)
        with torch.no_grad():
            states = reference(torch.tensor([ids])).last_hidden_state[0]  # [tokens, hidden]
        want = {"mean": states.mean(dim=0), "cls": states[0], "last": states[-1]}[expected]
        torch.testing.assert_close(torch.tensor(model.embed([ids])[0]), want / want.norm(), atol=1e-4, rtol=1e-4)
    finally:
        model.close()


def test_rank_pooling_is_refused(weights, tmp_path) -> None:
    with pytest.raises(UnsupportedError, match="pooling type 4"):
        checkpoint_pooling(_gguf(weights, tmp_path, gguf.PoolingType.RANK))
