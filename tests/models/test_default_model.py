"""The real default model (SmolLM2-135M GGUF Q4_1): logits and greedy tokens equal Transformers on the same file."""

from __future__ import annotations

import pytest
import torch

from llamarun.cache.contiguous import ContiguousKVCache
from llamarun.engine.forward import forward_tokens
from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.sampling.params import SamplingParams

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves.",
    "Explain in two sentences how a refrigerator works.",
    "List three prime numbers greater than 100 and explain why they are prime.",
]


@pytest.fixture(scope="module")
def reference(default_gguf, default_hf_tokenizer, reuse_default_gguf_reader):
    from transformers import AutoModelForCausalLM

    tok = default_hf_tokenizer  # Transformers' tokenizer from the same GGUF, built once (tests/conftest.py)
    with reuse_default_gguf_reader():  # the file parsed once by gguf's reader, not twice more here
        model = AutoModelForCausalLM.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name,
                                                     torch_dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def ours(default_gguf):
    return build_model(open_checkpoint(default_gguf))


def _chat_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_logits_match_transformers(reference, ours):
    tok, ref = reference
    for prompt in PROMPTS[:2]:
        ids = _chat_ids(tok, prompt)
        with torch.no_grad():
            expected = ref(torch.tensor([ids])).logits[0]  # [tokens, vocab]
        got = forward_tokens(ours, ContiguousKVCache(ours.config, 512, torch.float32, "cpu"), ids, all_logits=True)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-3)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_greedy_generations_identical(reference, ours):
    tok, ref = reference
    engine = LLMEngine(ours, EngineConfig(context_length=1024, kv_tokens=4096), dtype=torch.float32, device="cpu")
    for prompt in PROMPTS:
        ids = _chat_ids(tok, prompt)
        with torch.no_grad():
            # No end-of-sequence on either side, so both run exactly 40 steps through any end token.
            out = ref.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
        expected = out[0, len(ids):].tolist()
        engine.add_request(ids, SamplingParams.greedy(max_tokens=40), stop_ids=())
        got = []
        while engine.has_unfinished:
            got += [t.token_id for out in engine.step() for t in out.new_tokens]
        assert got == expected, f"diverged for {prompt!r}: {tok.decode(got)!r} vs {tok.decode(expected)!r}"
