"""The batched sampler: greedy, filters, penalties, seeds, batch invariance, distribution, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from llamarun.sampling import Sampler, SamplerState, SamplingParams
from llamarun.sampling.filters import apply_min_p, apply_top_p, top_k_candidates
from llamarun.sampling.penalties import TokenCounts, apply_penalties

PLAIN = dict(top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)  # sampling with no filter or penalty


def _states(params: SamplingParams, n: int, seed0: int = 0) -> list[SamplerState]:
    return [SamplerState(params.replace(seed=seed0 + i)) for i in range(n)]


def _draws(logits: torch.Tensor, params: SamplingParams, n: int) -> torch.Tensor:
    """n independent draws from one row of logits, each row of the batch with its own seed."""
    return Sampler()(logits.expand(n, -1), _states(params, n))


def test_greedy_is_argmax_for_any_dtype() -> None:
    logits = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0))
    states = [SamplerState(SamplingParams.greedy()) for _ in range(8)]
    assert torch.equal(Sampler()(logits, states), logits.argmax(-1))
    assert torch.equal(Sampler()(logits.bfloat16(), states), logits.bfloat16().float().argmax(-1))


def test_sampler_does_not_modify_callers_logits() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    before = logits.clone()
    states = [SamplerState(SamplingParams(seed=1), prompt_token_ids=[1, 2, 3]) for _ in range(3)]
    Sampler()(logits, states, allowed=torch.ones(3, 50, dtype=torch.bool))
    assert torch.equal(logits, before)


def test_temperature_to_zero_gives_argmax() -> None:
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(2))
    draws = _draws(logits, SamplingParams(temperature=1e-4, **PLAIN), 400)
    assert (draws == logits.argmax()).all()
    # At temperature 1 the same logits do not always give the argmax, so the check above has teeth.
    assert (_draws(logits, SamplingParams(temperature=1.0, **PLAIN), 400) != logits.argmax()).any()


def test_top_k_mask_exact() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    values, ids = top_k_candidates(logits, torch.tensor([[2], [3]]), 3)
    assert ids[0, :2].tolist() == [1, 3] and ids[1].tolist() == [0, 1, 2]
    assert torch.isinf(values[0, 2]) and torch.isfinite(values[1]).all()


def test_top_p_and_min_p_masks_exact() -> None:
    sorted_logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(4, -1)
    kept = torch.isfinite(apply_top_p(sorted_logits, torch.tensor([[0.75], [0.9], [1.0], [0.01]]))).sum(-1)
    assert kept.tolist() == [2, 3, 4, 1]  # smallest prefix whose mass reaches p; always at least one
    assert torch.isfinite(apply_top_p(sorted_logits, 0.9)).sum(-1).tolist() == [3] * 4  # one p for all rows
    kept = torch.isfinite(apply_min_p(sorted_logits, torch.tensor([[0.2], [0.5], [0.0], [1.0]]))).sum(-1)
    assert kept.tolist() == [3, 2, 4, 1]  # p >= min_p * 0.5
    assert torch.isfinite(apply_min_p(sorted_logits, 0.5)).sum(-1).tolist() == [2] * 4


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(temperature=1.5, top_k=5, top_p=1.0), [9, 8, 7, 6, 5]),
        (SamplingParams(temperature=1.0, top_k=0, top_p=0.6), None),  # computed below
        (SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.3), None),
        (SamplingParams(temperature=1.0, top_k=4, top_p=0.5, min_p=0.2), None),
    ],
)
def test_filters_never_sample_outside_allowed_set(params: SamplingParams, allowed: list[int] | None) -> None:
    logits = torch.linspace(-2.0, 2.0, 10)[None, :]  # token 9 most likely
    probs = (logits[0] / params.temperature).softmax(-1)
    order = probs.argsort(descending=True).tolist()
    keep = set(order[: params.top_k or 10])
    kept_mass, top_p_set = 0.0, set()
    for t in order:  # reference top-p over the renormalised top-k set
        if t in keep and kept_mass < params.top_p:
            top_p_set.add(t)
            kept_mass += probs[t].item() / sum(probs[i].item() for i in keep)
    expected = {t for t in top_p_set if probs[t] >= params.min_p * probs.max()}
    if allowed is not None:
        assert expected == set(allowed)
    draws = _draws(logits, params.replace(repetition_penalty=1.0), 3000)
    seen = set(draws.tolist())
    assert seen <= expected  # never outside
    assert seen == expected  # and every allowed token does get drawn


def test_sampling_matches_softmax_distribution() -> None:
    logits = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.0, -3.0]])
    for params in (SamplingParams(temperature=1.0, **PLAIN), SamplingParams(temperature=0.7, **PLAIN)):
        n = 6000
        draws = _draws(logits, params, n)
        observed = torch.bincount(draws, minlength=6).double()
        expected = (logits[0].double() / params.temperature).softmax(-1) * n
        chi2 = ((observed - expected) ** 2 / expected).sum().item()
        assert chi2 < 30.0, (chi2, observed.tolist(), expected.tolist())  # 5 dof: p ~ 1e-5


def test_top_k_sampling_matches_renormalised_distribution() -> None:
    logits = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.0, -3.0]])
    params = SamplingParams(temperature=0.8, top_k=3, top_p=1.0, repetition_penalty=1.0)
    n = 6000
    observed = torch.bincount(_draws(logits, params, n), minlength=6).double()
    probs = (logits[0].double() / 0.8).softmax(-1)
    probs[[2, 4, 5]] = 0.0  # outside the top 3
    expected = probs / probs.sum() * n
    keep = expected > 0
    assert observed[~keep].sum() == 0
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    assert chi2 < 25.0, (chi2, observed.tolist())


def test_unseeded_top_k_draws_noise_for_the_candidates_only_and_keeps_the_distribution(monkeypatch) -> None:
    """Unseeded rows draw Exponential noise for their k candidates, not the whole vocabulary (1.1 ms a token on
    CPUs at 49k tokens), and still sample the renormalised top-k distribution."""
    logits = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.0, -3.0]]).repeat(1, 1000)  # 6000 tokens, ties broken by topk
    logits[0, 6:] = -10.0  # only the first six can be in the top 3
    params = SamplingParams(temperature=0.8, top_k=3, top_p=1.0, repetition_penalty=1.0)
    sizes = []
    original = torch.Tensor.exponential_
    monkeypatch.setattr(torch.Tensor, "exponential_",
                        lambda t, *a, **k: sizes.append(t.shape[-1]) or original(t, *a, **k))
    n = 6000
    draws = Sampler()(logits.expand(n, -1), [SamplerState(params) for _ in range(n)])
    assert sizes == [3]  # one draw of [n, 3]
    observed = torch.bincount(draws, minlength=6000)[:6].double()
    assert observed.sum() == n
    probs = (logits[0, :6].double() / 0.8).softmax(-1)
    probs[[2, 4, 5]] = 0.0
    expected = probs / probs.sum() * n
    keep = expected > 0
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    assert chi2 < 25.0, (chi2, observed.tolist())


def test_penalty_formula_hand_computed() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    counts = torch.tensor([[1, 2, 0, 1, 0]], dtype=torch.int32)
    rep, presence, frequency = torch.tensor([[2.0]]), torch.tensor([[0.5]]), torch.tensor([[0.25]])
    out = apply_penalties(logits, counts, rep, presence, frequency)
    # seen tokens: positive / 2, negative * 2, then - 0.25 * count - 0.5
    assert out.tolist() == [[0.25, -3.0, 0.5, 0.75, -2.0]]
    assert torch.equal(apply_penalties(logits, counts, 2.0, 0.5, 0.25), out)  # shared values as floats


def test_token_counts_follow_the_window() -> None:
    prompt = [0, 1, 1, 3]
    assert TokenCounts(0, prompt).vector(5, torch.device("cpu")).tolist() == [1, 2, 0, 1, 0]
    assert TokenCounts(2, prompt).vector(5, torch.device("cpu")).tolist() == [0, 1, 0, 1, 0]
    # Incremental updates after the vector exists equal a recount of the last `window` tokens.
    gen = torch.Generator().manual_seed(3)
    for window in (0, 1, 7):
        counts = TokenCounts(window, prompt)
        counts.vector(5, torch.device("cpu"))
        history = list(prompt)
        for t in torch.randint(0, 5, (40,), generator=gen).tolist():
            counts.append(t)
            history.append(t)
            recent = history[-window:] if window else history
            assert counts.vector(5, torch.device("cpu")).tolist() == [recent.count(i) for i in range(5)]


def test_penalties_change_the_greedy_choice() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0]])
    plain = SamplerState(SamplingParams.greedy(), prompt_token_ids=[3])
    penalised = SamplerState(SamplingParams.greedy(repetition_penalty=2.0), prompt_token_ids=[3])
    outside = SamplerState(SamplingParams.greedy(repetition_penalty=2.0, repeat_last_n=1),
                           prompt_token_ids=[3, 0])
    tokens = Sampler()(logits.expand(3, -1), [plain, penalised, outside])
    # 3.0 / 2 = 1.5 < 2.0 picks token 0; with a window of one, token 3 is out of it and stays 3.0
    assert tokens.tolist() == [3, 0, 3]
    penalised.append(0)  # now 2.0 / 2 = 1.0 and 1.5 wins
    assert Sampler()(logits, [penalised]).tolist() == [3]


def _generate(states: list[SamplerState], row: int, steps: int, vocab: int = 64) -> list[int]:
    """Run `steps` sampling steps on a fixed sequence of logits; return row `row`'s tokens."""
    gen = torch.Generator().manual_seed(123)
    sampler, out = Sampler(), []
    for _ in range(steps):
        logits = torch.randn(1, vocab, generator=gen).expand(len(states), -1)
        tokens = sampler(logits, states).tolist()
        for state, t in zip(states, tokens, strict=True):
            state.append(t)
        out.append(tokens[row])
    return out


def test_seed_reproducible_and_seeds_differ() -> None:
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=7)
    first = _generate([SamplerState(params)], 0, 30)
    assert first == _generate([SamplerState(params)], 0, 30)
    assert first != _generate([SamplerState(params.replace(seed=8))], 0, 30)


@pytest.mark.parametrize("params", [
    SamplingParams(seed=11),  # Ollama defaults: top-k 40, top-p 0.9, repetition penalty
    SamplingParams(seed=11, top_k=0, top_p=0.95, min_p=0.05),
    SamplingParams(seed=11, top_k=0, top_p=1.0, temperature=1.2, presence_penalty=0.5),
])
def test_seeded_row_same_alone_or_in_a_batch(params: SamplingParams) -> None:
    alone = _generate([SamplerState(params, prompt_token_ids=[1, 2])], 0, 25)
    neighbours = [
        SamplerState(SamplingParams.greedy()),
        SamplerState(SamplingParams(top_k=60, seed=3, temperature=1.3, min_p=0.02)),  # other k_max, T
        SamplerState(SamplingParams(top_k=0, top_p=0.5)),  # unseeded, sorted path
        SamplerState(SamplingParams(top_k=0, top_p=1.0, frequency_penalty=1.0, logprobs=2)),
    ]
    batch = neighbours[:2] + [SamplerState(params, prompt_token_ids=[1, 2])] + neighbours[2:]
    assert _generate(batch, 2, 25) == alone


def test_grammar_mask() -> None:
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0, 0.5, 4.0]])
    allowed = torch.tensor([[True, True, False, True, False]])  # narrower than the logits: 5 is padding
    greedy = SamplerState(SamplingParams.greedy())
    assert Sampler()(logits, [greedy], allowed=allowed).tolist() == [3]
    draws = Sampler()(logits.expand(500, -1), _states(SamplingParams(**PLAIN), 500),
                      allowed=allowed.expand(500, -1))
    assert set(draws.tolist()) == {0, 1, 3}
    with pytest.raises(ValueError, match="grammar mask"):
        Sampler()(logits, [greedy], allowed=torch.ones(1, 6))


def test_logprobs_are_raw_model_logprobs() -> None:
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(5))
    states = [SamplerState(SamplingParams(seed=1, logprobs=3)), SamplerState(SamplingParams.greedy()),
              SamplerState(SamplingParams.greedy(logprobs=0, repetition_penalty=3.0), prompt_token_ids=[0])]
    out = Sampler().sample(logits, states)
    ref = logits.log_softmax(-1)  # before penalties and temperature (vLLM's rule)
    for row in (0, 2):
        assert torch.allclose(out.logprobs[row], ref[row, out.token_ids[row]])
    assert math.isnan(out.logprobs[1].item())
    top_values, top_ids = ref[0].topk(3)
    assert torch.equal(out.top_token_ids[0], top_ids) and torch.allclose(out.top_logprobs[0], top_values)
    assert (out.top_token_ids[1] == -1).all()


def test_mismatched_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match="sampler states"):
        Sampler()(torch.zeros(2, 5), [SamplerState(SamplingParams())])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_rules_without_host_sync() -> None:
    device = torch.device("cuda")
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(9)).to(device)
    states = [SamplerState(SamplingParams(seed=i, logprobs=2 if i == 3 else None), prompt_token_ids=[1, 5])
              for i in range(4)] + [SamplerState(SamplingParams.greedy()),
                                    SamplerState(SamplingParams(top_k=0, top_p=0.8, min_p=0.1))]
    sampler = Sampler()
    sampler(logits, states)  # first call builds generators and counts
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for state in states:
            state.append(7)
        tokens = sampler(logits, states)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert tokens.device.type == "cuda"
    assert tokens[4].item() == logits[4].argmax().item()
