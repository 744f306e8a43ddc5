"""The batched engine: outputs equal single-request runs under every scheduling situation."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.engine.step import PENDING
from llamarun.errors import LlamarunError
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.sampling.params import SamplingParams

GREEDY = SamplingParams.greedy(max_tokens=12)
PROMPTS = [
    [1, 17, 42, 99, 3],
    [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31],
    [200, 201],
    [9] * 40,
    list(range(30, 90)),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = TinySpec(llama3_rope=True)
    weights, _ = make_weights(spec, seed=11)
    return build_model(open_checkpoint(write_hf(spec, weights, tmp_path_factory.mktemp("e") / "hf"), "hf"))


def make_engine(model, **overrides) -> LLMEngine:
    config = EngineConfig(**({"context_length": 128, "kv_tokens": 1024, "block_size": 16} | overrides))
    return LLMEngine(model, config, dtype=torch.float32, device="cpu")


def run_all(engine: LLMEngine, prompts, params=GREEDY, arrivals=None) -> dict[str, list[int]]:
    """Add prompt i at step arrivals[i]; step until done; tokens per request id."""
    arrivals = arrivals or [0] * len(prompts)
    out: dict[str, list[int]] = {}
    step = 0
    pending = sorted(range(len(prompts)), key=lambda i: arrivals[i])
    while pending or engine.has_unfinished:
        while pending and arrivals[pending[0]] <= step:
            i = pending.pop(0)
            out[f"r{i}"] = []
            engine.add_request(prompts[i], params, request_id=f"r{i}")
        for o in engine.step():
            out[o.request_id].extend(t.token_id for t in o.new_tokens)
        step += 1
        assert step < 10_000
    return out


@pytest.fixture(scope="module")
def alone(model) -> dict[str, list[int]]:
    """Each prompt in an engine of its own: the reference every batched run must equal."""
    return {f"r{i}": run_all(make_engine(model), [p])["r0"] for i, p in enumerate(PROMPTS)}


def test_alone_matches_transformers_greedy(model, alone, tmp_path):
    from transformers import LlamaForCausalLM

    spec = TinySpec(llama3_rope=True)
    weights, _ = make_weights(spec, seed=11)
    ref = LlamaForCausalLM.from_pretrained(write_hf(spec, weights, tmp_path / "hf"), torch_dtype=torch.float32)
    for i in (0, 4):
        ids = torch.tensor([PROMPTS[i]])
        expected = ref.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert alone[f"r{i}"] == expected[0, len(PROMPTS[i]):].tolist()


def test_batched_with_staggered_arrivals_equals_alone(model, alone):
    engine = make_engine(model)
    got = run_all(engine, PROMPTS, arrivals=[0, 0, 3, 5, 6])
    assert got == alone
    assert engine.pool.num_used == 0  # no leaked blocks


def test_chunked_prefill_equals_whole(model, alone):
    engine = make_engine(model, max_batch_tokens=7)
    assert run_all(engine, PROMPTS, arrivals=[0, 1, 2, 3, 4]) == alone


def test_prefix_cache_hit_equals_miss(model):
    shared = list(range(100, 150))  # 50 tokens: three full blocks of 16
    prompts = [shared + [1, 2], shared + [3, 4, 5]]
    cold = make_engine(model, enable_prefix_cache=False)
    expected = run_all(cold, prompts, arrivals=[0, 50])
    warm = make_engine(model)
    got = run_all(warm, prompts, arrivals=[0, 50])
    assert got == expected
    assert warm.pool.prefix_hits >= 3 and cold.pool.prefix_hits == 0


def test_cached_tokens_are_reported(model):
    engine = make_engine(model)
    shared = list(range(100, 150))
    stats = {}
    for rid, prompt in (("a", shared + [1]), ("b", shared + [2])):
        engine.add_request(prompt, GREEDY, request_id=rid)
        while engine.has_unfinished:
            for o in engine.step():
                if o.finished:
                    stats[o.request_id] = o.stats
    assert stats["a"].cached_tokens == 0 and stats["b"].cached_tokens == 48


def test_preemption_under_tiny_block_budget(model, alone):
    engine = make_engine(model, kv_tokens=128, context_length=128)  # 8 blocks for 5 requests
    got = run_all(engine, PROMPTS)
    assert got == alone
    assert engine.scheduler.num_preemptions > 0
    assert engine.pool.num_used == 0


def test_abort_frees_blocks(model):
    engine = make_engine(model)
    engine.add_request(PROMPTS[4], SamplingParams.greedy(max_tokens=50), request_id="x")
    engine.step()
    assert engine.pool.num_used > 0
    out = engine.abort("x")
    assert out.finished and out.finish_reason == "abort"
    assert engine.pool.num_used == 0 and not engine.has_unfinished
    assert engine.abort("x") is None


def test_seeded_sampling_independent_of_batch(model):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=7, max_tokens=10)
    alone = run_all(make_engine(model), [PROMPTS[1]], params)["r0"]
    batched = run_all(make_engine(model), PROMPTS, params)["r1"]
    assert batched == alone


def test_stop_ids_and_length_limits(model, alone):
    stop = alone["r0"][3]
    engine = make_engine(model)
    engine.add_request(PROMPTS[0], GREEDY, stop_ids=(stop,), request_id="s")
    tokens, reason = [], None
    while engine.has_unfinished:
        for o in engine.step():
            tokens += [t.token_id for t in o.new_tokens]
            reason = o.finish_reason or reason
    assert tokens == alone["r0"][:alone["r0"].index(stop)] and reason == "stop"
    with pytest.raises(LlamarunError, match="context holds 128"):
        engine.add_request(list(range(200)), GREEDY)
    # The context bounds prompt + output.
    got = run_all(make_engine(model, context_length=64), [PROMPTS[4]], SamplingParams.greedy())["r0"]
    assert len(PROMPTS[4]) + len(got) == 64


def test_preempted_request_samples_as_if_never_preempted(model):
    # Seeded sampling with penalties: the runner must keep each request's generator and counts across
    # preemption; re-creating them on resume would restart the generator and change the tokens.
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.3, frequency_penalty=0.2,
                            seed=11, max_tokens=20)
    roomy = make_engine(model)
    expected = run_all(roomy, PROMPTS, params)
    tight = make_engine(model, kv_tokens=128, context_length=128)
    assert run_all(tight, PROMPTS, params) == expected
    assert tight.scheduler.num_preemptions > 0 and roomy.scheduler.num_preemptions == 0
    assert tight.runner.states == {} and roomy.runner.states == {}  # dropped once everything finished


def test_request_id_reused_after_finishing_gets_fresh_sampler_state(model):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=3, max_tokens=4)
    expected = run_all(make_engine(model), [PROMPTS[0]], params)["r0"]
    engine = make_engine(model)
    engine.add_request(PROMPTS[3], SamplingParams.greedy(max_tokens=30), request_id="long")
    engine.add_request(PROMPTS[0], params, request_id="x")
    first: list[int] = []
    while "x" in engine.scheduler.requests:
        first += [t.token_id for o in engine.step() if o.request_id == "x" for t in o.new_tokens]
    engine.add_request(PROMPTS[0], params, request_id="x")  # same id, before the runner heard of the end
    with pytest.raises(LlamarunError, match="already in use"):
        engine.add_request(PROMPTS[0], params, request_id="x")
    second: list[int] = []
    while engine.has_unfinished:
        second += [t.token_id for o in engine.step() if o.request_id == "x" for t in o.new_tokens]
    assert first == second == expected

# ----- overlapped decoding -----
# The engine plans the next step before reading this one's tokens: exactly the tokens, finish reasons and
# freed blocks of one step at a time, in every situation the pipeline must survive. The CPU runner's launch
# runs the step whole, so this tests the pipeline's bookkeeping (PENDING tokens, requests that end while a
# step is in flight, aborts, reused ids); the CUDA runner's device-side token feed is tested on a GPU
# (test_engine_cuda.py).


def _overlapped(model, **overrides):
    engine = make_engine(model, **overrides)
    engine.runner.overlap = True
    launched = []
    original = engine.runner.launch

    def launch(step, prev=None):
        launched.append([s.token_ids for s in step.seqs])
        return original(step, prev)

    engine.runner.launch = launch
    return engine, launched


def test_overlapped_greedy_equals_one_step_at_a_time(model):
    plain = run_all(make_engine(model), PROMPTS, arrivals=[0, 0, 3, 9, 9])
    engine, launched = _overlapped(model)
    assert run_all(engine, PROMPTS, arrivals=[0, 0, 3, 9, 9]) == plain
    assert any(tokens == [[PENDING]] * len(tokens) for tokens in launched)  # it did plan steps ahead
    assert engine.pool.num_used == 0 and not engine.has_unfinished and engine.runner.states == {}


def test_seeded_sampling_and_length_limits_survive_overlap(model):
    params = SamplingParams(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.0, seed=5, max_tokens=7)
    plain = run_all(make_engine(model), PROMPTS, params)
    engine, _ = _overlapped(model)
    got = run_all(engine, PROMPTS, params)
    assert got == plain and all(len(t) == 7 for t in got.values())


def test_a_stop_token_in_flight_drops_the_extra_step(model):
    reference = run_all(make_engine(model), [PROMPTS[0]], SamplingParams.greedy(max_tokens=12))["r0"]
    stop = reference[4]
    engine, launched = _overlapped(model)
    engine.add_request(PROMPTS[0], SamplingParams.greedy(max_tokens=12), stop_ids=(stop,), request_id="s")
    engine.add_request(PROMPTS[1], SamplingParams.greedy(max_tokens=12), request_id="t")
    tokens, reasons = {"s": [], "t": []}, {}
    while engine.has_unfinished:
        for o in engine.step():
            tokens[o.request_id] += [t.token_id for t in o.new_tokens]
            if o.finished:
                reasons[o.request_id] = o.finish_reason
    assert tokens["s"] == reference[:reference.index(stop)] and reasons == {"s": "stop", "t": "length"}
    assert any(tokens == [[PENDING]] * len(tokens) for tokens in launched)
    assert tokens["t"] == run_all(make_engine(model), [PROMPTS[1]])["r0"]
    assert engine.pool.num_used == 0 and engine.runner.states == {}


def test_abort_while_a_step_is_in_flight(model):
    engine, _ = _overlapped(model)
    engine.add_request(PROMPTS[2], SamplingParams.greedy(max_tokens=30), request_id="a")
    engine.add_request(PROMPTS[0], SamplingParams.greedy(max_tokens=30), request_id="b")
    b_tokens: list[int] = []
    for _ in range(4):
        b_tokens += [t.token_id for o in engine.step() if o.request_id == "b" for t in o.new_tokens]
    assert engine._inflight is not None  # decoding overlaps by now
    assert engine.abort("a").finish_reason == "abort"
    engine.add_request(PROMPTS[4], SamplingParams.greedy(max_tokens=5), request_id="a")  # the id, reused at once
    a_tokens: list[int] = []
    while engine.has_unfinished:
        for o in engine.step():
            (a_tokens if o.request_id == "a" else b_tokens).extend(t.token_id for t in o.new_tokens)
    assert a_tokens == run_all(make_engine(model), [PROMPTS[4]], SamplingParams.greedy(max_tokens=5))["r0"]
    assert b_tokens == run_all(make_engine(model), [PROMPTS[0]], SamplingParams.greedy(max_tokens=30))["r0"]
    assert engine.pool.num_used == 0 and engine.runner.states == {}


def test_a_reused_id_never_gets_the_old_request_s_in_flight_token(model):
    """"x" ends on a stop token while the step after is in flight; a new "x" added at once must start clean."""
    params = SamplingParams.greedy(max_tokens=12)
    reference = run_all(make_engine(model), [PROMPTS[0]], params)["r0"]
    stop = reference[3]
    expected = reference[:reference.index(stop)]
    engine, _ = _overlapped(model)
    engine.add_request(PROMPTS[3], SamplingParams.greedy(max_tokens=30), request_id="long")
    engine.add_request(PROMPTS[0], params, stop_ids=(stop,), request_id="x")
    first: list[int] = []
    while "x" in engine.scheduler.requests:
        first += [t.token_id for o in engine.step() if o.request_id == "x" for t in o.new_tokens]
    assert engine._inflight is not None and "x" in engine._inflight.stale  # its extra step is still out
    engine.add_request(PROMPTS[0], params, stop_ids=(stop,), request_id="x")
    second: list[int] = []
    while engine.has_unfinished:
        second += [t.token_id for o in engine.step() if o.request_id == "x" for t in o.new_tokens]
    assert first == second == expected


def test_penalties_logprobs_and_preemption_take_the_plain_path(model):
    penalised = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.3, seed=2, max_tokens=9)
    plain = run_all(make_engine(model), PROMPTS, penalised)
    engine, launched = _overlapped(model)
    assert run_all(engine, PROMPTS, penalised) == plain and launched == []
    tight, _ = _overlapped(model, kv_tokens=128, context_length=128)  # 8 blocks for 5 requests: preemption
    assert run_all(tight, PROMPTS) == run_all(make_engine(model), PROMPTS)
    assert tight.scheduler.num_preemptions > 0 and tight.pool.num_used == 0
