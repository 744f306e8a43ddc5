"""`llamarun pull/list/show/rm` run as a user runs them: a subprocess with its own LLAMARUN_HOME."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from llamarun.store.default_model import install_default_model_from
from llamarun.store.home import ModelStore

REV = "fedcba9876543210fedcba9876543210fedcba98"
# Prints whether torch got imported, after running the CLI in-process.
RUNNER = ("import sys; from llamarun.cli.main import main; rc = main(sys.argv[1:]); "
          "print('TORCH_IMPORTED=' + str('torch' in sys.modules), file=sys.stderr); sys.exit(rc)")


def llamarun(home: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HOME": str(home.parent / "hf"),
                        "PIP_NO_INDEX": "1"} | (extra_env or {})
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture
def home(tmp_path: Path, default_gguf: Path) -> Path:
    root = tmp_path / "home"
    install_default_model_from(default_gguf, ModelStore(root))  # a hard link: no download per test
    return root


def _assert_clean_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("Error: ") and text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_list_shows_the_default_model_without_torch(home: Path) -> None:
    proc = llamarun(home, "list")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert len(rows) == 1 and rows[0].split()[:4] == ["smollm2:135m", "b179c9523d0e", "98", "MB"]
    assert "TORCH_IMPORTED=False" in proc.stderr


def test_show_reports_model_facts_without_torch(home: Path, default_gguf_reader) -> None:
    ref = default_gguf_reader  # gguf's GGUFReader over the default model (tests/conftest.py)
    proc = llamarun(home, "show", "smollm2")
    assert proc.returncode == 0, proc.stderr
    facts = dict(line.strip().rsplit(None, 1) for line in proc.stdout.split("\n\n")[0].splitlines()[1:])
    assert facts["architecture"] == ref.fields["general.architecture"].contents()
    n = sum(int(t.n_elements) for t in ref.tensors)
    assert facts["parameters"] == f"{n / 1e6:.1f}M"
    assert facts["quantization"] == "Q4_1"
    assert facts["context length"] == str(ref.fields["llama.context_length"].contents())
    assert facts["embedding length"] == str(ref.fields["llama.embedding_length"].contents())
    assert "  Template" in proc.stdout and "  License" in proc.stdout and "apache-2.0" in proc.stdout
    assert "TORCH_IMPORTED=False" in proc.stderr


def test_show_template_license_modelfile(home: Path, default_gguf: Path, default_gguf_reader) -> None:
    template = default_gguf_reader.fields["tokenizer.chat_template"].contents()
    assert llamarun(home, "show", "smollm2:135m", "--template").stdout == template + "\n"
    assert llamarun(home, "show", "smollm2:latest", "--license").stdout.strip() == "apache-2.0"
    modelfile = llamarun(home, "show", "smollm2", "--modelfile").stdout
    entry = ModelStore(home).get("smollm2", "135m")
    assert f"FROM {entry.model_path}\n" in modelfile and f'TEMPLATE """{template}"""' in modelfile
    # A local path works wherever a name does.
    assert llamarun(home, "show", str(default_gguf), "--license").stdout.strip() == "apache-2.0"


def test_show_errors(home: Path) -> None:
    _assert_clean_error(llamarun(home, "show", "smolm2"), "did you mean smollm2")
    _assert_clean_error(llamarun(home, "show", "llama3.1:8b"), "llamarun pull llama3.1:8b")
    _assert_clean_error(llamarun(home, "show", str(home / "nope.gguf")), "no such file")


def test_rm_removes_cleanly_and_unknown_fails(home: Path) -> None:
    proc = llamarun(home, "rm", "smollm2")
    assert proc.returncode == 0 and "deleted 'smollm2:135m'" in proc.stdout
    assert not (home / "models" / "smollm2").exists()
    assert llamarun(home, "list").stdout.splitlines()[1:] == []
    _assert_clean_error(llamarun(home, "rm", "smollm2"), "not in the store")
    _assert_clean_error(llamarun(home, "rm", "llama3.1:8b"), "not in the store")


def test_pull_present_default_and_unknown(home: Path) -> None:
    # PIP_NO_INDEX is set: a pip call would fail, so success proves the present copy was reused.
    proc = llamarun(home, "pull", "smollm2")
    assert proc.returncode == 0 and "pulled smollm2:135m" in proc.stdout
    _assert_clean_error(llamarun(home, "pull", "llama3.9:8b"), "did you mean")


def test_pull_list_show_rm_of_a_cached_hf_repo(home: Path) -> None:
    repo = home.parent / "hf" / "hub" / "models--meta-llama--Llama-3.2-1B-Instruct"
    config = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}
    files = {"config.json": json.dumps(config).encode(), "LICENSE": b"LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
             "model.safetensors": save({"model.norm.weight": np.ones(32, np.float32)})}
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (repo / "snapshots" / REV).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / REV / name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)

    proc = llamarun(home, "pull", "llama3.2:1b")
    assert proc.returncode == 0, proc.stderr
    listed = {r.split()[0] for r in llamarun(home, "list").stdout.splitlines()[1:]}
    assert listed == {"smollm2:135m", "llama3.2:1b"}
    show = llamarun(home, "show", "llama3.2:1b")
    assert "context length      131072" in show.stdout and "quantization        BF16" in show.stdout
    assert "LLAMA 3.2 COMMUNITY LICENSE" in show.stdout and "TORCH_IMPORTED=False" in show.stderr
    rm = llamarun(home, "rm", "llama3.2:1b")
    assert rm.returncode == 0 and "Hugging Face cache" in rm.stdout
    assert (repo / "snapshots" / REV / "config.json").exists()  # the shared HF cache is left alone
