"""Energy accounting: each step's joules split over its requests by tokens; idle energy charged to nobody."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import TinySpec, make_weights, write_hf

from llamarun.engine.energy import DEFAULT_GRID_G_PER_KWH, EnergyMeter, co2_grams
from llamarun.engine.llm_engine import EngineConfig, LLMEngine
from llamarun.loaders.registry import open_checkpoint
from llamarun.models.build import build_model
from llamarun.sampling.params import SamplingParams


class FakeCounter:
    """The card's energy counter in millijoules, advanced by the test."""

    def __init__(self) -> None:
        self.mj = 1_000_000.0

    def joules(self) -> float:
        return self.mj / 1e3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    spec = TinySpec()
    weights, _ = make_weights(spec, seed=3)
    path = write_hf(spec, weights, tmp_path_factory.mktemp("energy") / "hf")
    return build_model(open_checkpoint(path, "hf"), torch.float32, "cpu")


def test_a_step_is_charged_to_its_requests_by_tokens_and_idle_energy_to_nobody(model):
    engine = LLMEngine(model, EngineConfig(context_length=64, kv_tokens=256), dtype=torch.float32, device="cpu")
    assert engine.energy is None  # no meter on CPUs
    nvml = FakeCounter()
    engine.energy = EnergyMeter(nvml.joules, interval=None)
    nvml.mj += 50_000  # 50 J used while idle: nobody's
    engine.add_request(list(range(1, 31)), SamplingParams.greedy(max_tokens=1), request_id="long")  # 30 tokens
    engine.add_request(list(range(1, 11)), SamplingParams.greedy(max_tokens=1), request_id="short")  # 10 tokens
    real_run = engine.runner.run

    def run_using_energy(step):
        nvml.mj += 4_000 * step.num_tokens  # 4 J per token this step ran
        return real_run(step)

    engine.runner.run = run_using_energy
    finished = {}
    while engine.has_unfinished:
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.stats
    assert finished["long"].energy_joules == pytest.approx(120.0)  # 30 tokens x 4 J
    assert finished["short"].energy_joules == pytest.approx(40.0)
    assert finished["long"].joules_per_token == pytest.approx(120.0)  # one generated token each


def test_the_background_meter_extrapolates_at_the_last_power_and_adds_up(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("llamarun.engine.energy.time.perf_counter", lambda: clock[0])
    counter = FakeCounter()
    meter = EnergyMeter(counter.joules, interval=3600)  # its thread sleeps: the test takes the samples
    clock[0], counter.mj = 101.0, counter.mj + 10_000
    meter._take_sample()  # 10 J in 1 s: 10 W from here on
    assert meter.delta() == pytest.approx(10.0)
    clock[0] = 101.5
    assert meter.delta() == pytest.approx(5.0)  # half a second at 10 W, extrapolated: no NVML read
    clock[0], counter.mj = 102.0, counter.mj + 12_000  # the card actually used 12 J in that second
    meter._take_sample()
    assert meter.delta() == pytest.approx(7.0)  # 22 J in all: nothing lost, nothing counted twice
    clock[0] = 102.1  # 12 W extrapolated: 1.2 J ahead of the counter, which then says only 0.2 J more came
    assert meter.delta() == pytest.approx(1.2)
    clock[0], counter.mj = 102.2, counter.mj + 200
    meter._take_sample()
    assert meter.delta() == 0.0  # the estimate ran ahead: nothing more until the counter catches up
    clock[0], counter.mj = 103.2, counter.mj + 3_000
    meter._take_sample()
    assert meter.delta() == pytest.approx(2.0)  # 25.2 J counted in all: charged 10 + 5 + 7 + 1.2 + 2


def test_co2_from_the_grid_intensity(monkeypatch):
    kwh = 3.6e6  # joules in a kWh
    assert co2_grams(kwh) == pytest.approx(DEFAULT_GRID_G_PER_KWH)
    monkeypatch.setenv("LLAMARUN_GRID_G_PER_KWH", "50")
    assert co2_grams(kwh) == pytest.approx(50.0)
    assert co2_grams(kwh, 100.0) == pytest.approx(100.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cards_counter_is_read():
    meter = EnergyMeter.for_device("cuda")
    assert meter is not None
    x = torch.randn(4096, 4096, device="cuda")
    for _ in range(200):
        x = x @ x / 64
    torch.cuda.synchronize()
    assert meter.delta() > 0
