"""`llamarun bench --random-weights`: end to end through the CLI on the CPU, time budgets, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from llamarun.bench import offline
from llamarun.bench.bandwidth import decode_step_bytes
from llamarun.bench.offline import estimate_seconds, run_levels, run_offline
from llamarun.bench.random_weights import PRESETS, load_random_model
from llamarun.bench.report import LevelResult
from llamarun.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# The GPU machine has torch and numpy but no server stack, tokenizers or checkpoint readers.
NOT_ON_THE_GPU_MACHINE = {"fastapi", "uvicorn", "pydantic", "starlette", "transformers", "gguf", "huggingface_hub",
                          "jinja2", "tokenizers", "tiktoken", "safetensors", "rich"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cli_benches_a_random_tiny_model_end_to_end(tmp_path):
    out = tmp_path / "rw.json"
    argv = ["llamarun", "bench", "--random-weights", "tiny", "--device", "cpu", "--concurrency", "1,3",
            "--requests", "2,3", "--prompt-tokens", "12", "--output-tokens", "6", "--copy-bandwidth", "50",
            "--json", str(out)]
    # Exactly `python -m llamarun.cli.main ...`, then the list of top-level modules it loaded.
    code = (f"import runpy, sys\nsys.argv = {argv!r}\ntry:\n"
            "    runpy.run_module('llamarun.cli.main', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as stop:\n    code = stop.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}))\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=170)
    assert proc.returncode == 0, proc.stderr
    loaded = set(eval(proc.stdout.strip().splitlines()[-1]))
    assert "torch" in loaded and not loaded & NOT_ON_THE_GPU_MACHINE
    assert "offline benchmark of tiny (random weights)" in proc.stdout
    assert "built tiny with random weights" in proc.stdout and "of the 50 GB/s copy bandwidth (given)" in proc.stdout
    record = json.loads(out.read_text())
    assert record["model"] == "tiny" and record["weights"] == "random" and record["complete"] is True
    assert record["settings"]["device"] == "cpu" and record["settings"]["dtype"] == "float32"
    assert record["settings"]["requests"] == [2, 3] and record["settings"]["context_length"] == 32
    assert record["settings"]["warm_runs"] == 0  # the default on a CPU
    assert record["bandwidth"] == {"copy_gb_s": 50.0, "source": "given"}
    assert record["random_weights"]["parameters"] == PRESETS["tiny"].num_parameters
    assert record["machine"]["torch"] and "triton" in record["machine"]
    one, three = record["levels"]
    assert (one["requests"], one["output_tokens"], three["requests"], three["output_tokens"]) == (2, 12, 3, 18)
    assert one["decode_tokens_per_s"] == pytest.approx(1000 / one["tpot_p50_ms"], rel=1e-2)
    assert one["prompt_tokens_per_s"] > 0 and len(record["raw"][0]["prompt_tps"]) == 2
    step = decode_step_bytes(PRESETS["tiny"], 4, 12 + 3)  # float32, average context of a decode step
    assert one["decode_bytes_per_step"] == int(step)
    assert one["decode_bw_fraction"] == pytest.approx(step * one["decode_tokens_per_s"] / 50e9, rel=0.02, abs=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--random-weights", "llama9"], "unknown --random-weights shape 'llama9'"),
    (["some-model", "--random-weights", "tiny"], "both a MODEL ('some-model') and --random-weights"),
    (["--random-weights", "tiny", "--url", "http://127.0.0.1:1"], "not a server"),
    (["--random-weights", "tiny", "--serve"], "not a server"),
    (["--random-weights", "tiny", "--weights", "exact"], "--weights exact applies to checkpoints"),
    (["--random-weights", "tiny", "--quantize", "fp8", "--device", "cpu"], "fp8 needs an NVIDIA GPU"),
    (["--random-weights", "tiny", "--quantize", "int4"], "int4 group size 128 does not divide"),
    (["--random-weights", "tiny", "--quantize", "int8", "--group-size", "64"], "--group-size applies to int4"),
    (["--random-weights", "tiny", "--concurrency", "1,2", "--requests", "1,2,3"],
     "--requests has 3 counts for 2 concurrency levels"),
    (["--random-weights", "tiny", "--requests", "x"], "bad --requests 'x'"),
    (["--random-weights", "tiny", "--requests", "0"], "--requests must be at least 1"),
    (["--random-weights", "tiny", "--time-budget", "0"], "--time-budget must be positive"),
    (["--random-weights", "tiny", "--copy-bandwidth", "-5"], "--copy-bandwidth must be positive"),
    (["--random-weights", "tiny", "--warm-runs", "-1"], "--warm-runs must be 0 or more"),
    (["--random-weights", "tiny", "--head", "exact"], "--head needs online quantization"),
    (["--random-weights", "tiny", "--quantize", "int8", "--head", "fp8", "--device", "cpu"],
     "--head fp8 needs an NVIDIA GPU"),
    (["--url", "http://127.0.0.1:1", "--warm-runs", "2"], "--warm-runs applies to offline runs"),
    (["--random-weights", "tiny", "--ctx", "100000"], "context length 100000 is outside 16..4096"),
    (["--random-weights", "tiny", "--device", "tpu"], "device 'tpu'"),
    (["--random-weights", "llama3.3-70b", "--device", "cpu"], "the weights alone do not fit"),
])
def test_bad_values_give_one_clear_error_line(argv, message, capsys):
    assert main(["bench", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err


# ----- time budget -----


@pytest.fixture(scope="module")
def engine():
    return load_random_model("tiny", device="cpu", concurrency=64, context_length=32).engine


def test_estimate_assumes_no_better_throughput_per_request():
    last = LevelResult("offline", 8, 4, 0, 0, 2.0)
    assert estimate_seconds(last, 8) == pytest.approx(4.0)
    assert estimate_seconds(LevelResult("offline", 8, 0, 0, 0, 2.0), 8) == float("inf")


def test_level_that_cannot_fit_the_budget_is_skipped(engine):
    calls = []
    results, skipped = run_levels(engine, vocab_size=512, levels=[1, 64], requests=[1, 100_000], prompt_tokens=12,
                                  output_tokens=6, deadline=time.perf_counter() + 2.0,
                                  on_level=lambda done, sk: calls.append(len(done)))
    # Level 1 takes a fraction of a second (or is cut at 2 s on a crowded machine); 100,000 times that cannot
    # fit, however fast the machine (64 times did, on a quiet one).
    assert [r.concurrency for r in results] == [1] and calls == [1]
    assert skipped[0]["concurrency"] == 64 and skipped[0]["estimated_seconds"] >= skipped[0]["seconds_left"]
    assert not engine.has_unfinished and engine.pool.num_used == 0


def test_warm_runs_go_before_each_timed_level_with_other_prompts(engine, monkeypatch):
    seen = []
    real = offline.run_offline

    def recording(engine, **kw):
        seen.append((kw["concurrency"], kw["seed"]))
        return real(engine, **kw)

    monkeypatch.setattr(offline, "run_offline", recording)
    hits = engine.metrics().prefix_hits
    # 24 tokens fill one cache block: a prompt seen before would count a prefix hit.
    results, _ = run_levels(engine, vocab_size=512, levels=[1, 2], requests=[1, 2], prompt_tokens=24,
                            output_tokens=3, seed=5, warm_runs=2)
    warm = offline.WARM_SEED
    assert seen == [(1, warm), (1, warm + 1), (1, 5), (2, warm + 1000), (2, warm + 1001), (2, 6)]
    assert [r.concurrency for r in results] == [1, 2]  # only the timed runs are results
    assert engine.metrics().prefix_hits == hits  # no warm prompt was a timed one
    with pytest.raises(ValueError, match="warm_runs must be 0 or more"):
        run_levels(engine, vocab_size=512, levels=[1], requests=[1], prompt_tokens=12, output_tokens=3, warm_runs=-1)


def test_a_level_past_the_deadline_is_cut_short_and_cleaned_up(engine):
    r = run_offline(engine, vocab_size=512, requests=6, concurrency=3, prompt_tokens=12, output_tokens=6,
                    deadline=time.perf_counter() - 1)
    assert r.extra["cut_short_at_deadline"] is True
    assert (r.requests, r.extra["aborted_requests"], r.extra["never_started"]) == (0, 3, 3)
    assert not engine.has_unfinished and engine.pool.num_used == 0


def test_a_run_stopped_midway_keeps_the_levels_it_measured(tmp_path, monkeypatch, capsys):
    out = tmp_path / "partial.json"
    real, calls = offline.run_offline, []

    def stop_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill during the second level
        return real(*args, **kwargs)

    monkeypatch.setattr(offline, "run_offline", stop_on_second)
    code = main(["bench", "--random-weights", "tiny", "--device", "cpu", "--concurrency", "1,2", "--requests", "1",
                 "--prompt-tokens", "8", "--output-tokens", "4", "--json", str(out)])
    assert code == 130
    record = json.loads(out.read_text())
    assert record["complete"] is False and [lv["concurrency"] for lv in record["levels"]] == [1]


@pytest.mark.parametrize("tied", [False, True])
def test_random_weights_keep_the_head_float_under_head_exact(tied):
    from llamarun.bench.random_weights import build_random_model
    from llamarun.quant.footprint import model_footprint
    from llamarun.quant.int8 import Int8Method
    from llamarun.quant.method import PackedLinear

    config = replace(PRESETS["tiny"], tie_word_embeddings=tied)
    model = build_random_model(config, device="cpu", dtype=torch.float32, method=Int8Method(), head_method=None)
    assert type(model.lm_head) is torch.nn.Linear and isinstance(model.model.layers[0].mlp.down_proj, PackedLinear)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)  # drawn, not left uninitialized
    formats = {g.group: g.format for g in model_footprint(model)}
    assert formats["head"].startswith("float32") and formats["mlp"] == "int8"


def test_a_warm_run_that_uses_up_the_budget_skips_its_level_instead_of_recording_nothing(engine, monkeypatch):
    real = offline.run_offline
    calls = []

    def slow_warm_run(engine, **kw):
        calls.append(kw["seed"])
        if kw["seed"] >= offline.WARM_SEED:
            time.sleep(0.6)  # the warm run takes what is left of the budget
        return real(engine, **kw)

    monkeypatch.setattr(offline, "run_offline", slow_warm_run)
    results, skipped = run_levels(engine, vocab_size=512, levels=[1], requests=[1], prompt_tokens=12,
                                  output_tokens=3, deadline=time.perf_counter() + 0.5, warm_runs=1)
    assert results == [] and calls == [offline.WARM_SEED]  # no timed run started
    assert skipped[0]["concurrency"] == 1 and skipped[0]["reason"] == "its warm run left no time"
    assert not engine.has_unfinished and engine.pool.num_used == 0
