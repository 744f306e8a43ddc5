"""The eval loop on tiny random checkpoints, checked against Transformers computing the same numbers on its own."""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.eval.loader import format_loader
from llamarun.eval.run import evaluate
from llamarun.eval.text import DEFAULT_TEXT, read_text, text_tokens
from llamarun.eval.windows import plan_windows
from llamarun.loaders.registry import open_checkpoint
from llamarun.store.resolve import resolve_model

CTX = 32
SPEC = TinySpec()


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    weights, _ = make_weights(SPEC, seed=5)
    gen = torch.Generator().manual_seed(6)
    # A "format" that differs from the reference: every linear weight nudged by noise of 5% of its spread.
    perturbed = {name: w + 0.05 * w.std() * torch.randn(w.shape, generator=gen) if name.endswith("proj.weight") else w
                 for name, w in weights.items()}
    root = tmp_path_factory.mktemp("eval")
    return {"exact": str(add_byte_tokenizer(write_hf(SPEC, weights, root / "ref"))),
            "perturbed": str(add_byte_tokenizer(write_hf(SPEC, perturbed, root / "perturbed")))}


@pytest.fixture(scope="module")
def ids(folders) -> list[int]:
    resolved = resolve_model(folders["exact"])
    tokenizer = open_checkpoint(resolved.path, resolved.format).tokenizer()
    return text_tokens(tokenizer, read_text(DEFAULT_TEXT), max_tokens=4 * CTX + 1)


@functools.cache
def transformers_model(folder: str):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()


def transformers_logprobs(folder: str, window: list[int]) -> torch.Tensor:
    model = transformers_model(folder)
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([window])).logits[0].double(), dim=-1)  # [tokens, vocab]


def loader(folders: dict[str, str], tmp_path):
    """Formats by checkpoint: 'perturbed' is the second checkpoint loaded exactly."""
    def load(name: str):
        resolved = resolve_model(folders.get(name, folders["exact"]))
        loaded = format_loader(resolved, ctx=CTX, device="cpu")("exact" if name == "perturbed" else name)
        return dataclasses.replace(loaded, name=name)
    return load


def test_perplexity_is_exp_mean_nll_of_transformers(folders, ids, tmp_path) -> None:
    assert len(ids) == 4 * CTX + 1
    windows = plan_windows(len(ids), CTX)
    [result] = evaluate(ids, ["exact"], windows, loader(folders, tmp_path), scratch=tmp_path)
    nll, count = 0.0, 0
    for k in range(4):  # disjoint windows, computed here without the eval's window plan
        logprobs = transformers_logprobs(folders["exact"], ids[k * CTX:(k + 1) * CTX])
        targets = torch.tensor(ids[k * CTX + 1:(k + 1) * CTX + 1])
        nll -= float(logprobs.gather(1, targets[:, None]).sum())
        count += CTX
    assert result.totals.tokens == count == len(ids) - 1
    assert math.isclose(result.totals.perplexity, math.exp(nll / count), rel_tol=1e-4)
    assert result.totals.kl == 0.0 and result.totals.top1 == 1.0  # the reference against itself


def test_one_window_over_the_whole_text(folders, ids, tmp_path) -> None:
    short = ids[:CTX + 1]
    [result] = evaluate(short, ["exact"], plan_windows(len(short), CTX), loader(folders, tmp_path), scratch=tmp_path)
    logprobs = transformers_logprobs(folders["exact"], short[:-1])
    nll = -float(logprobs.gather(1, torch.tensor(short[1:])[:, None]).sum())
    assert math.isclose(result.totals.perplexity, math.exp(nll / CTX), rel_tol=1e-4)


def test_a_format_against_itself_has_zero_kl(folders, ids, tmp_path) -> None:
    # "exact" and "fp32" are the same weights and math on a CPU, loaded twice.
    ref, same = evaluate(ids, ["exact", "fp32"], plan_windows(len(ids), CTX, 16), loader(folders, tmp_path),
                         scratch=tmp_path)
    assert same.totals.tokens == ref.totals.tokens == len(ids) - 1
    assert same.totals.kl == 0.0 and same.totals.top1 == 1.0
    assert same.totals.perplexity == ref.totals.perplexity
    assert list(tmp_path.iterdir()) == []  # the reference's log-probabilities file is gone


def test_kl_of_a_perturbed_model_equals_transformers(folders, ids, tmp_path) -> None:
    ref, other = evaluate(ids, ["exact", "perturbed"], plan_windows(len(ids), CTX), loader(folders, tmp_path),
                          scratch=tmp_path)
    kl, agree, nll = 0.0, 0, 0.0
    for k in range(4):
        window = ids[k * CTX:(k + 1) * CTX]
        p = transformers_logprobs(folders["exact"], window)
        q = transformers_logprobs(folders["perturbed"], window)
        kl += float(F.kl_div(q, p, log_target=True, reduction="sum"))
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        nll -= float(q.gather(1, torch.tensor(ids[k * CTX + 1:(k + 1) * CTX + 1])[:, None]).sum())
    assert kl > 0 and other.totals.kl > 0
    assert math.isclose(other.totals.kl, kl, rel_tol=1e-3)
    assert other.totals.agree == agree
    assert math.isclose(other.totals.perplexity, math.exp(nll / (len(ids) - 1)), rel_tol=1e-4)
    assert ref.totals.kl == 0.0


def test_int8_costs_kl_and_a_quarter_of_the_bytes(folders, ids, tmp_path) -> None:
    ref, int8 = evaluate(ids, ["exact", "int8"], plan_windows(len(ids), CTX), loader(folders, tmp_path),
                         scratch=tmp_path)
    h, i, kv = SPEC.hidden_size, SPEC.intermediate_size, SPEC.num_kv_heads * SPEC.head_dim
    rows_in = [(h + 2 * kv, h), (h, h), (2 * i, h), (h, i)]  # qkv, o, gate_up, down: (out, in) per layer
    params = SPEC.num_layers * sum(o * n for o, n in rows_in) + SPEC.vocab_size * h  # + the untied head
    out_rows = SPEC.num_layers * sum(o for o, _ in rows_in) + SPEC.vocab_size
    assert ref.linear_bytes == 4 * params
    # int8 weights, a float32 scale per output row, and the CPU kernel's bf16 copy of it where that kernel runs
    assert int8.linear_bytes in (params + 4 * out_rows, params + 6 * out_rows)
    assert 0 < int8.totals.kl < 0.05
    assert int8.totals.tokens == len(ids) - 1
