"""`llamarun embed` as a user runs it, on a tiny checkpoint path: one JSON array per text, equal to LLM.embed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.api import LLM


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    spec = TinySpec()
    weights, _ = make_weights(spec, seed=3)
    return str(add_byte_tokenizer(write_hf(spec, weights, tmp_path_factory.mktemp("embcli") / "hf")))


def llamarun(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "llamarun.cli.main", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300)


def test_prints_one_array_per_text_equal_to_the_api(tiny) -> None:
    proc = llamarun("embed", tiny, "--dtype", "float32", "hello there", "--dimensions", "16", "the hills")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    llm = LLM(tiny, dtype=torch.float32)
    try:
        want = llm.embed(["hello there", "the hills"], dimensions=16)
    finally:
        llm.close()
    assert len(rows) == 2 and all(len(r) == 16 for r in rows)
    for got, expected in zip(rows, want, strict=True):
        assert got == pytest.approx(expected, abs=1e-6)
    piped = llamarun("embed", tiny, "--dtype", "float32", "--dimensions", "16", stdin="hello there\n\nthe hills\n")
    assert piped.returncode == 0 and piped.stdout == proc.stdout


def test_bad_dimensions_is_a_clean_error(tiny) -> None:
    proc = llamarun("embed", tiny, "hi", "--dimensions", "1000")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "dimensions=1000" in proc.stderr and "64" in proc.stderr
