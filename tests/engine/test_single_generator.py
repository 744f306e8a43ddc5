"""The single-request loop: greedy tokens equal Transformers' generate; prefix reuse changes nothing."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.engine.single import GenerationStats, SingleRequestGenerator
from llamarun.errors import LlamarunError
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.sampling.params import SamplingParams

PROMPT = [1, 17, 42, 99, 3, 250, 7, 128, 64, 5]
GREEDY = SamplingParams.greedy(max_tokens=24)


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
    spec = TinySpec(llama3_rope=True)
    weights, _ = make_weights(spec, seed=3)
    return write_hf(spec, weights, tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture()
def generator(hf_path):
    model = build_model(open_checkpoint(hf_path, "hf"))
    return SingleRequestGenerator(model, 128, torch.float32, "cpu")


def test_greedy_matches_transformers_generate(hf_path, generator):
    from transformers import LlamaForCausalLM

    ref = LlamaForCausalLM.from_pretrained(hf_path, torch_dtype=torch.float32).eval()
    expected = ref.generate(torch.tensor([PROMPT]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(PROMPT):].tolist()
    stats = GenerationStats()
    got = list(generator.generate(PROMPT, GREEDY, stop_ids=(), stats=stats))
    assert got == expected
    assert stats.generated_tokens == 24 and stats.done_reason == "length"
    assert stats.prompt_tokens == len(PROMPT) and stats.cached_tokens == 0


def test_prefix_reuse_gives_identical_tokens(generator):
    first = list(generator.generate(PROMPT, GREEDY, stop_ids=()))
    # A second turn that extends the first: only the new tokens are prefilled.
    follow_up = PROMPT + first + [9, 10, 11]
    stats = GenerationStats()
    reused = list(generator.generate(follow_up, GREEDY, stop_ids=(), stats=stats))
    assert stats.cached_tokens == len(PROMPT) + len(first) - 1
    generator.reset()
    fresh = list(generator.generate(follow_up, GREEDY, stop_ids=()))
    assert reused == fresh


def test_stop_id_ends_generation_without_being_yielded(generator):
    free = list(generator.generate(PROMPT, GREEDY, stop_ids=()))
    stop = free[5]
    first_stop = free.index(stop)
    stats = GenerationStats()
    got = list(generator.generate(PROMPT, GREEDY, stop_ids=(stop,), stats=stats))
    assert got == free[:first_stop]
    assert stats.done_reason == "stop"


def test_context_limit_stops_with_length(generator):
    stats = GenerationStats()
    got = list(generator.generate(PROMPT * 12, SamplingParams.greedy(), stop_ids=(), stats=stats))
    assert len(PROMPT) * 12 + len(got) == 128 + 1  # the last token is sampled but never cached
    assert stats.done_reason == "length"


def test_prompt_longer_than_context_is_a_clear_error(generator):
    with pytest.raises(LlamarunError, match="context holds 128"):
        list(generator.generate(PROMPT * 20, GREEDY, stop_ids=()))


def test_seeded_sampling_is_reproducible(generator):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=1234, max_tokens=16)
    a = list(generator.generate(PROMPT, params, stop_ids=()))
    b = list(generator.generate(PROMPT, params, stop_ids=()))
    c = list(generator.generate(PROMPT, params.replace(seed=99), stop_ids=()))
    assert a == b and a != c
