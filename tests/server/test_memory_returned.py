"""Memory is given back after a large body (issue 10, item 5): the server does not stay the size of its
largest request. Runs the real app, engine and Hugging Face tokenizer (a tiny random model) in-process.

An 1.5 MB prompt becomes 1.5M tokens with the tiny byte vocabulary; the tokenizer's buffers for it run to
hundreds of megabytes. The prompt is then refused (the context holds 256 tokens), and those pages must
go back to the OS (utils/heap.py), not stay in malloc's free lists.
"""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_hf

from llamarun.server import ModelManager, create_app
from llamarun.server.model_manager import default_loader
from llamarun.utils import heap

pytestmark = pytest.mark.timeout(300)
MiB = 2**20


def rss() -> float:
    """This process's resident memory in MiB (Linux: /proc/self/statm counts pages)."""
    gc.collect()
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or not heap.release_free_memory(),
                    reason="needs Linux and glibc's malloc_trim")
def test_a_large_refused_prompt_leaves_no_memory_behind(tmp_path) -> None:
    spec = TinySpec()
    model = str(add_byte_tokenizer(write_hf(spec, make_weights(spec)[0], tmp_path / "tiny")))
    app = create_app(ModelManager(default_loader(), resolve=lambda name: name, context_length=256), preload=model)
    big = json.dumps({"model": model, "prompt": "word " * 300_000, "stream": False}).encode()  # 1.5 MB
    small = {"model": model, "prompt": "hello", "stream": False, "options": {"num_predict": 2}}
    with TestClient(app) as client:
        assert client.post("/api/generate", json=small).status_code == 200
        before = rss()
        tracemalloc.start()
        try:
            for _ in range(3):
                r = client.post("/api/generate", content=big, headers={"content-type": "application/json"})
                assert r.status_code == 400 and "the prompt has 15000" in r.json()["error"]
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        grown = rss() - before
        assert client.post("/api/generate", json=small).status_code == 200  # and the server still serves
    assert peak > 10 * MiB  # the Python side alone handled the body and a 1.5M-token id list...
    assert held < 2 * MiB  # ...and keeps none of it
    assert grown < 64, f"the process kept {grown:.0f} MiB after three 1.5 MB prompts"
