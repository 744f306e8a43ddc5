"""LlamaGuard on llamarun's engine, with tiny random Llamas in the real architecture standing in for the guard.

Verdict texts are forced through the grammar engine; the score must be the probability of "unsafe" that
Transformers' own LlamaForCausalLM computes on the same checkpoint, prompt and prefix (the expected prompt
ids come from Meta's template rendered by jinja2 and Meta's tokenizer, not from our code).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from llama_guard_templates import GUARD_1B_TEMPLATE, GUARD_8B_TEMPLATE
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from tiny_guard_model import SAFE, UNSAFE, write_tiny_guard

from llamarun.api import AsyncLLM
from llamarun.safety.llama_guard import LlamaGuard
from llamarun.safety.llama_guard.parse import UNPARSED
from llamarun.safety.verdict import Message, Subject
from llamarun.sampling.grammar_spec import GrammarSpec

QUESTION = "How do I pick a lock?"
ANSWER = "Use a tension wrench and a pick."


def forced(text: str) -> GrammarSpec:
    return GrammarSpec("choice", [text])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    return {"unsafe_1b": write_tiny_guard(root / "u1b", style="1b", lean=UNSAFE, boost=2.0),
            "safe_8b": write_tiny_guard(root / "s8b", style="8b", lean=SAFE, boost=2.0, seed=1)}


@pytest.fixture(scope="module")
def models(folders):
    loaded = {k: AsyncLLM(str(p), context_length=1024, max_kv_tokens=8192) for k, p in folders.items()}
    yield loaded
    for m in loaded.values():
        m.shutdown()


def check(guard: LlamaGuard, subject: Subject):
    return asyncio.run(guard.check(subject))


def meta_prompt_ids(template: str, chat: list[dict], excluded: list[str] | None = None) -> list[int]:
    """The prompt ids Meta's template and tokenizer give (the 8B template's stray leading space dropped)."""
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    if template is GUARD_1B_TEMPLATE:
        chat = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in chat]
    text = env.from_string(template).render(messages=chat, excluded_category_keys=excluded or []).lstrip(" ")
    return MetaTokenizer.get_instance().encode(text, bos=False, eos=False, allowed_special="all")


def reference_p_unsafe(folder, template: str, chat: list[dict], prefix: list[int]) -> float:
    """P("unsafe") after prompt + prefix, by Transformers on the checkpoint, the prompt from Meta's template."""
    from transformers import LlamaForCausalLM

    ids = meta_prompt_ids(template, chat) + prefix
    model = LlamaForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]  # [vocab]
    return torch.softmax(logits.double(), -1)[UNSAFE].item()


def test_forced_unsafe_verdict_and_score_from_the_real_logits(models, folders):
    guard = LlamaGuard(models["unsafe_1b"], grammar=forced("\n\nunsafe\nS1,S10"))
    v = check(guard, Subject("input", QUESTION))
    assert (v.guard, v.safe, v.categories) == ("llama_guard", False, ("S1", "S10"))
    assert v.detail == "unsafe: S1 Violent Crimes, S10 Hate"
    assert v.extra["style"] == "llama-guard-3-1b" and v.extra["role"] == "User"
    ids = v.extra["token_ids"]
    assert ids[:2] == [271, UNSAFE]  # the template's blank line, then the verdict token
    expected = reference_p_unsafe(folders["unsafe_1b"], GUARD_1B_TEMPLATE, [{"role": "user", "content": QUESTION}],
                                  ids[:1])
    assert 0.5 < v.score < 1.0 and v.score == pytest.approx(expected, rel=1e-3)


def test_forced_safe_verdict_on_the_8b_style_guard(models, folders):
    guard = LlamaGuard(models["safe_8b"], grammar=forced("\n\nsafe"))
    history = (Message("system", "be nice"), Message("user", QUESTION))
    v = check(guard, Subject("output", ANSWER, history))
    assert (v.safe, v.categories, v.extra["style"], v.extra["role"]) == (True, (), "llama-guard-3-8b", "Agent")
    assert v.extra["token_ids"][:2] == [271, SAFE]
    chat = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    expected = reference_p_unsafe(folders["safe_8b"], GUARD_8B_TEMPLATE, chat, [271])
    # "unsafe" is not among the 20 likeliest tokens here: the score is the 20th one's probability, a bound.
    assert v.extra["score_is_bound"] and expected < v.score < 0.05


def test_threshold_decides_when_the_text_reads_cleanly(models):
    text = "\n\nunsafe\nS2"
    low = check(LlamaGuard(models["safe_8b"], grammar=forced(text)), Subject("input", QUESTION))
    assert low.safe and low.score < 0.5 and "below 0.5" in low.detail  # the model's own P(unsafe) is low
    strict = LlamaGuard(models["safe_8b"], grammar=forced(text), threshold=low.score / 2)
    v = check(strict, Subject("input", QUESTION))
    assert (v.safe, v.categories) == (False, ("S2",))
    lenient = LlamaGuard(models["unsafe_1b"], grammar=forced("\n\nsafe"), threshold=0.01)
    v = check(lenient, Subject("input", QUESTION))
    assert not v.safe and v.categories == () and "wrote 'safe'" in v.detail


def test_malformed_answers_fail_closed_whatever_the_score(models):
    for text in ("\n\nmaybe", "\n\nunsafe\nviolence"):
        v = check(LlamaGuard(models["safe_8b"], grammar=forced(text)), Subject("input", QUESTION))
        assert not v.safe and UNPARSED in v.categories and v.score < 0.5, text
        assert v.extra["problems"]


def test_excluded_categories(models):
    guard = LlamaGuard(models["unsafe_1b"], grammar=forced("\n\nunsafe\nS6"), excluded=["s6"])
    v = check(guard, Subject("input", QUESTION))
    assert v.safe and "excluded" in v.detail
    chat = [{"role": "user", "content": QUESTION}]
    assert v.extra["prompt_tokens"] == len(meta_prompt_ids(GUARD_1B_TEMPLATE, chat, ["S6"]))
    assert v.extra["prompt_tokens"] < len(meta_prompt_ids(GUARD_1B_TEMPLATE, chat))
    mixed = LlamaGuard(models["unsafe_1b"], grammar=forced("\n\nunsafe\nS6,S9"), excluded=["S6"])
    assert check(mixed, Subject("input", QUESTION)).categories == ("S9",)


def test_s14_belongs_to_the_8b_only(models):
    on_8b = check(LlamaGuard(models["safe_8b"], grammar=forced("\n\nunsafe\nS14"), threshold=1e-9),
                  Subject("tool_call", "import os; os.system('rm -rf /')"))
    assert on_8b.categories == ("S14",) and on_8b.extra["problems"] == [] and on_8b.extra["role"] == "Agent"
    on_1b = check(LlamaGuard(models["unsafe_1b"], grammar=forced("\n\nunsafe\nS14")), Subject("input", QUESTION))
    assert on_1b.categories == ("S14",) and "S14 is not a category" in on_1b.extra["problems"][0]


def test_concurrent_checks_equal_one_at_a_time(models):
    subjects = [Subject("input", f"question number {i}: " + "why? " * i) for i in range(6)]
    guard = LlamaGuard(models["unsafe_1b"], grammar=forced("\n\nunsafe\nS1"))

    async def together():
        return await asyncio.gather(*(guard.check(s) for s in subjects))

    alone = [check(guard, s) for s in subjects]
    for a, b in zip(asyncio.run(together()), alone, strict=True):
        assert (a.safe, a.categories) == (b.safe, b.categories)
        assert a.score == pytest.approx(b.score, rel=1e-4, abs=1e-7)
    assert models["unsafe_1b"].metrics().kv_blocks_used == 0
