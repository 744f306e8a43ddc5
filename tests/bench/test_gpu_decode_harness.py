"""The GPU benchmark harness (benchmarks/gpu_decode.py, write_record.py, peer_gpt_fast.py) run on the CPU.

The harness runs once on a rented GPU, so every stage is exercised here first at tiny shapes. gpt-fast is
never part of the repository: the peer's own run needs a local checkout (GPT_FAST_DIR, default
.peers/gpt-fast) and is skipped without one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llamarun.bench.bandwidth import decode_step_bytes
from llamarun.bench.random_weights import PRESETS

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
GPT_FAST = Path(os.environ.get("GPT_FAST_DIR", ROOT / ".peers" / "gpt-fast"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_record = _load("write_record")
peer = _load("peer_gpt_fast")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One whole smoke run of the harness: every stage on the CPU at tiny shapes."""
    out = tmp_path_factory.mktemp("gpu_decode")
    cmd = [sys.executable, str(BENCHMARKS / "gpu_decode.py"), "--smoke", "--out", str(out), "--budget", "240",
           "--gpt-fast", str(GPT_FAST)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    return out, proc


@pytest.mark.slow
@pytest.mark.timeout(320)
def test_smoke_run_writes_every_stage_and_one_summary(smoke_run):
    out, proc = smoke_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("env", "bandwidth", "batch1", "sweep", "summary"):
        assert (out / f"{name}.json").is_file(), name
    assert len(list(out.iterdir())) <= 8  # what comes back from the GPU machine is at most 8 files
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert all(stages[s]["ok"] for s in ("env", "bandwidth", "batch1", "sweep"))
    if shutil.which("nvidia-smi") is None:  # a failed stage is logged, and the next ones still ran
        assert stages["env-smi"]["ok"] is False
    ours = summary["batch1"]["llamarun"]
    assert ours["requests"] == 3 and ours["decode_tokens_per_s"] > 0 and ours["decode_bw_fraction"] > 0
    assert summary["copy_gb_s"] == json.loads((out / "bandwidth.json").read_text())["copy_gb_s"]
    assert [lv["concurrency"] for lv in summary["sweep"]["levels"]] == [1, 2, 4]
    assert "llamarun/gpt-fast" in proc.stdout and "concurrency sweep" in proc.stdout
    assert "batch1: done" in (out / "gpu_decode.log").read_text()
    if (GPT_FAST / "model.py").is_file():
        assert stages["peer"]["ok"] and summary["batch1"]["gpt_fast"]["tokens_per_s"] > 0
        assert summary["batch1"]["ratio_llamarun_to_gpt_fast"]["decode"] > 0
    else:
        assert stages["peer"]["ok"] is False and "no gpt-fast checkout" in proc.stdout


@pytest.mark.slow
def test_record_from_a_run_folder_has_ratios_to_the_peer(smoke_run, tmp_path):
    out, _ = smoke_run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    batch1 = json.loads((folder / "batch1.json").read_text())["levels"][0]
    fake_peer = {"engine": "gpt-fast", "tokens_per_s": 2 * batch1["output_tokens_per_s"],
                 "decode_tokens_per_s": 4 * batch1["decode_tokens_per_s"], "prompt_tokens_per_s": 1000.0,
                 "compile_s": 99.0, "decode_step_bytes": batch1["decode_bytes_per_step"], "gpt_fast_commit": "abc"}
    (folder / "peer.json").write_text(json.dumps(fake_peer))
    results = tmp_path / "results"
    assert write_record.main([str(folder), "--results", str(results)]) == 0
    [record_path] = results.glob("gpu-decode-*.json")
    record = json.loads(record_path.read_text())
    ratio = record["batch1"]["ratio_llamarun_to_gpt_fast"]
    assert ratio["decode"] == pytest.approx(0.25, abs=1e-3) and ratio["end_to_end"] == pytest.approx(0.5, abs=1e-3)
    peer_fraction = record["batch1"]["gpt_fast"]["decode_bw_fraction"]
    assert peer_fraction == pytest.approx(4 * record["batch1"]["llamarun"]["decode_bw_fraction"], rel=0.01)
    assert record["versions"]["gpt_fast_commit"] == "abc" and record["versions"]["torch"]
    assert record["stage_outputs"]["sweep"]["levels"] and record["date"] in record_path.name
    md = record_path.with_suffix(".md").read_text()
    assert "llamarun/gpt-fast" in md and "0.25x" in md


def test_record_needs_a_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        write_record.main([str(tmp_path)])
    assert "holds none of" in capsys.readouterr().err


def test_card_names_become_file_names():
    assert write_record.card_slug("NVIDIA H200") == "h200"
    assert write_record.card_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert write_record.card_slug(None) == "unknown"


@pytest.mark.parametrize("shape, args", [("llama3.1-8b", peer.LLAMA31_8B), ("tiny", peer.TINY)])
def test_peer_counts_decode_bytes_as_llamarun_does(shape, args):
    gf = SimpleNamespace(**args)
    assert peer.decode_step_bytes(gf, 128, 256) == int(decode_step_bytes(PRESETS[shape], 2, 128 + 128))


def test_peer_without_a_checkout_says_so(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "peer_gpt_fast.py"), "--gpt-fast", str(tmp_path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "holds no gpt-fast checkout" in proc.stderr


@pytest.mark.skipif(not (GPT_FAST / "model.py").is_file(), reason="needs a gpt-fast checkout (GPT_FAST_DIR)")
@pytest.mark.timeout(180)
def test_peer_runs_gpt_fast_eagerly_on_a_tiny_shape(tmp_path):
    out = tmp_path / "peer.json"
    cmd = [sys.executable, str(BENCHMARKS / "peer_gpt_fast.py"), "--gpt-fast", str(GPT_FAST), "--tiny",
           "--no-compile", "--device", "cpu", "--prompt-tokens", "8", "--new-tokens", "4", "--samples", "2",
           "--copy-bandwidth", "10", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result == json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["complete"] and result["compile"] is False and len(result["samples_tokens_per_s"]) == 2
    assert result["tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0 and result["warmup_s"] > 0
    assert result["parameters"] == PRESETS["tiny"].num_parameters  # the same toy shape as llamarun's
    assert result["decode_bw_fraction"] == pytest.approx(
        result["decode_step_bytes"] * result["decode_tokens_per_s"] / 10e9, rel=0.01, abs=1e-6)
