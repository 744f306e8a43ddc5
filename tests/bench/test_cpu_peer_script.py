"""benchmarks/cpu_peer_llama_cpp.py against a fake llama_cpp module: what it measures, alternates and records
(the real comparison runs outside CI: llama-cpp-python is a benchmark extra)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def peer(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import cpu_peer_llama_cpp

    return cpu_peer_llama_cpp


class FakeLlama:
    """Counts what the script asks of llama.cpp; each eval'd token costs nothing."""

    made: ClassVar[list[dict]] = []

    def __init__(self, **kw):
        FakeLlama.made.append(kw)
        self.evaluated: list[int] = []

    def tokenize(self, text: bytes) -> list[int]:
        return list(range(len(text.split())))

    def eval(self, ids: list[int]) -> None:
        self.evaluated += ids

    def sample(self, temp: float) -> int:
        assert temp == 0.0  # greedy, as llamarun's side
        return 7


def test_llama_cpp_side_prefills_once_then_decodes_token_by_token(peer, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    FakeLlama.made.clear()
    result = peer._llama_cpp("m.gguf", 16, 2)
    assert FakeLlama.made == [{"model_path": "m.gguf", "n_ctx": 2048, "n_threads": 2, "n_threads_batch": 2,
                               "verbose": False}]
    from cpu_default_model import PROMPT

    assert result["prompt_tokens"] == len(PROMPT.split()) and result["threads"] == 2
    assert result["decode_tps"] > 0 and result["prompt_tps"] > 0 and "llama.cpp" in result["engine"]


def test_rounds_alternate_engines_and_the_busy_condition_spins(peer, monkeypatch):
    calls, spinning = [], []
    monkeypatch.setattr(peer.multiprocessing, "Process", lambda target, daemon: types.SimpleNamespace(
        start=lambda: spinning.append(True), kill=lambda: spinning.append(False)))

    def child(engine, gguf, new_tokens, threads):
        calls.append((engine, threads, tuple(spinning)))
        return {"load_s": 1.0, "prompt_tps": 100.0 if engine == "llamarun" else 50.0,
                "decode_tps": 30.0 if engine == "llamarun" else 60.0, "load_avg": 1.5}

    runs = peer.measure("m.gguf", ["quiet", "busy"], 2, 8, 2, child=child)
    assert [c[0] for c in calls] == ["llamarun", "llama_cpp"] * 4
    assert all(c[1] is None for c in calls if c[0] == "llamarun")  # llamarun picks its own threads
    assert all(c[2] == () for c in calls[:4]) and all(c[2] == (True,) for c in calls[4:])
    assert spinning == [True, False]
    rows = peer.summarize(runs)
    assert [r["condition"] for r in rows] == ["quiet", "busy"]
    assert rows[0]["ratio_decode"] == pytest.approx(0.5) and rows[0]["ratio_prompt"] == pytest.approx(2.0)


def test_record_names_the_cpu(peer, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f\n")
    assert peer.cpu_model(str(cpuinfo)).startswith("Test CPU 9000, ")
    assert "avx512f avx2" in peer.cpu_model(str(cpuinfo))
    run = {"load_s": 1.0, "prompt_tps": 100.0, "decode_tps": 30.0, "load_avg": 0.5}
    md = peer.write_record({"quiet": {"llamarun": [run], "llama.cpp": [run]}}, 8, 1, folder=tmp_path)
    record = json.loads(md.with_suffix(".json").read_text())
    assert record["cpu"] == peer.cpu_model() and record["summary"][0]["ratio_decode"] == 1.0
    assert "| quiet |" in md.read_text() and record["cpu"] in md.read_text()
