"""Energy in the APIs' stats: on a metered GPU both APIs add joules and grams of CO2; on CPUs nothing."""

from __future__ import annotations

import pytest
from conftest import DEFAULT
from fake_llm import DEFAULT_REPLY

from llamarun.cli.verbose import stats_lines
from llamarun.engine.energy import co2_grams
from llamarun.engine.stats import RequestStats

TOKENS = len(DEFAULT_REPLY.encode())


def test_both_apis_report_energy_on_a_metered_gpu(make_app, loader) -> None:
    from fastapi.testclient import TestClient

    loader.defaults["joules_per_token"] = 0.5
    with TestClient(make_app()) as client:
        body = client.post("/api/chat", json={"model": DEFAULT, "stream": False,
                                              "messages": [{"role": "user", "content": "hi"}]}).json()
        assert body["energy_joules"] == pytest.approx(0.5 * TOKENS)
        assert body["co2_grams"] == pytest.approx(co2_grams(0.5 * TOKENS), rel=1e-3)
        chat = {"model": DEFAULT, "n": 2, "messages": [{"role": "user", "content": "hi"}]}
        usage = client.post("/v1/chat/completions", json=chat).json()["usage"]
        assert usage["energy_joules"] == pytest.approx(2 * 0.5 * TOKENS)  # both choices


def test_nothing_is_added_when_not_metered(client) -> None:
    body = client.post("/api/generate", json={"model": DEFAULT, "prompt": "x", "stream": False}).json()
    assert "energy_joules" not in body and "co2_grams" not in body
    usage = client.post("/v1/completions", json={"model": DEFAULT, "prompt": "x"}).json()["usage"]
    assert "energy_joules" not in usage


def test_verbose_prints_energy_and_co2_when_metered(monkeypatch) -> None:
    monkeypatch.setenv("LLAMARUN_GRID_G_PER_KWH", "100")
    stats = RequestStats(prompt_tokens=10, generated_tokens=20, prompt_seconds=0.1, decode_seconds=1.0,
                         energy_joules=36.0)
    lines = stats_lines(stats, 0.0, 1.1, 0)
    assert any(line.startswith("energy:") and "36.00 J (1.800 J/token)" in line for line in lines)
    assert any(line.startswith("CO2:") and "0.0010 g at 100 g/kWh" in line for line in lines)
    assert not any(line.startswith("energy") for line in stats_lines(RequestStats(), 0.0, 0.0, 0))
