"""`llamarun run` as a user runs it: real subprocesses, the real default model, and every kind of bad input."""

from __future__ import annotations

import json
import os
import pty
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_checkpoints import TinySpec, add_byte_tokenizer, make_weights, write_gguf, write_hf

VERBOSE_FIELDS = ["total duration", "load duration", "prompt eval count", "prompt cached count",
                  "prompt eval duration",
                  "prompt eval rate", "eval count", "eval duration", "eval rate", "peak memory"]


@pytest.fixture(scope="module")
def home(default_home: Path) -> Path:
    return default_home  # the session's home with the default model (tests/conftest.py): nothing here changes it


def llamarun(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    return subprocess.run([sys.executable, "-m", "llamarun.cli.main", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_one_shot_verbose_prints_every_field(home: Path) -> None:
    proc = llamarun(home, "run", "smollm2:135m", "What is the capital of France?", "--verbose",
                    "--temperature", "0", "--num-predict", "12")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    for field in VERBOSE_FIELDS:
        assert re.search(rf"^{field}:\s+\S*\d", proc.stderr, re.M), f"missing {field}:\n{proc.stderr}"
    count = int(re.search(r"^eval count:\s+(\d+)", proc.stderr, re.M).group(1))
    assert 1 <= count <= 12
    prompt = int(re.search(r"^prompt eval count:\s+(\d+)", proc.stderr, re.M).group(1))
    cached = int(re.search(r"^prompt cached count:\s+(\d+)", proc.stderr, re.M).group(1))
    assert prompt > 10 and 0 <= cached < prompt  # the whole templated prompt, cached part included
    phases = re.search(r"^load phases:\s+checks (\S+), weights (\S+), engine (\S+)$", proc.stderr, re.M)
    assert phases, f"no load phases line:\n{proc.stderr}"


def test_seeded_runs_repeat_and_stdin_is_a_prompt(home: Path) -> None:
    args = ("run", "smollm2:135m", "--seed", "42", "--num-predict", "16")
    a = llamarun(home, *args, "Tell me a story.")
    b = llamarun(home, *args, stdin="Tell me a story.\n")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_stop_string_cuts_the_answer(home: Path) -> None:
    free = llamarun(home, "run", "smollm2:135m", "Count from 1 to 10, separated by commas.", "--temperature", "0",
                    "--num-predict", "40")
    digits = [c for c in free.stdout if c.isdigit()]
    assert free.returncode == 0 and digits, free.stdout
    # The stop string comes from the free answer: which numbers a 4-bit model writes greedily shifts with the
    # kernels' rounding (int8 activation blocks on CPUs), and the cut is what this test is about.
    stop = digits[-1]
    cut = llamarun(home, "run", "smollm2:135m", "Count from 1 to 10, separated by commas.", "--temperature", "0",
                   "--num-predict", "40", "--stop", stop)
    assert cut.returncode == 0
    assert cut.stdout.rstrip("\n") == free.stdout[: free.stdout.index(stop)]


def test_interactive_chat_commands(home: Path) -> None:
    """Drive the chat through a real terminal: /set system, a turn, /clear, /bye."""
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "llamarun.cli.main", "run", "smollm2:135m", "--temperature", "0",
                             "--num-predict", "8"], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    os.close(slave)
    for line in ("/set system You answer in French.", "Hello!", "/clear", "/nonsense", "/bye"):
        os.write(master, (line + "\n").encode())
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    os.close(master)
    assert proc.returncode == 0, err
    assert "Set system message." in out and "Cleared conversation." in out
    assert "Unknown command '/nonsense'" in out
    answer = out.split("Set system message.", 1)[1].split("Cleared conversation.", 1)[0]
    assert answer.replace(">>>", "").strip(), out


# ----- bad input: one line, exit 1, no traceback -----

def test_unknown_model_name(home: Path) -> None:
    assert_clean_error(llamarun(home, "run", "smollm3:135m", "hi"), "smollm3:135m")


def test_missing_path(home: Path, tmp_path: Path) -> None:
    assert_clean_error(llamarun(home, "run", str(tmp_path / "nothing.gguf"), "hi"))


def test_truncated_gguf(home: Path, tmp_path: Path, default_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(default_gguf.read_bytes()[: 40_000_000])
    assert_clean_error(llamarun(home, "run", str(cut), "hi"), "truncated")


def test_wrong_magic(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGML" + os.urandom(4096))
    assert_clean_error(llamarun(home, "run", str(bad), "hi"))


@pytest.fixture()
def tiny_hf(tmp_path: Path) -> Path:
    spec = TinySpec()
    weights, _ = make_weights(spec)
    return add_byte_tokenizer(write_hf(spec, weights, tmp_path / "tiny"))


def test_tiny_hf_folder_runs(home: Path, tiny_hf: Path) -> None:
    proc = llamarun(home, "run", str(tiny_hf), "hello", "--raw", "--num-predict", "5", "--temperature", "0",
                    "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^eval count:\s+5 token", proc.stderr, re.M)


def test_tiny_gguf_runs_with_its_template(home: Path, tmp_path: Path) -> None:
    spec = TinySpec(tie_word_embeddings=True)
    weights, _ = make_weights(spec)
    path = write_gguf(spec, weights, tmp_path / "tiny.gguf")
    proc = llamarun(home, "run", str(path), "hello", "--num-predict", "5", "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^eval count:\s+5 token", proc.stderr, re.M)


def test_truncated_safetensors(home: Path, tiny_hf: Path) -> None:
    weights = tiny_hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert_clean_error(llamarun(home, "run", str(tiny_hf), "hi"), "truncated")


def test_corrupt_safetensors_header(home: Path, tiny_hf: Path) -> None:
    weights = tiny_hf / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:8] + b"{not json" + data[17:])
    assert_clean_error(llamarun(home, "run", str(tiny_hf), "hi"), "safetensors")


def test_config_that_does_not_match_the_tensors(home: Path, tiny_hf: Path) -> None:
    config = json.loads((tiny_hf / "config.json").read_text())
    config["intermediate_size"] = 96
    (tiny_hf / "config.json").write_text(json.dumps(config))
    assert_clean_error(llamarun(home, "run", str(tiny_hf), "hi"), "shape")


def test_unknown_architecture(home: Path, tiny_hf: Path) -> None:
    config = json.loads((tiny_hf / "config.json").read_text())
    config.update(architectures=["MambaForCausalLM"], model_type="mamba")
    (tiny_hf / "config.json").write_text(json.dumps(config))
    assert_clean_error(llamarun(home, "run", str(tiny_hf), "hi"), "MambaForCausalLM")


def test_unsupported_gguf_quantization(home: Path, tmp_path: Path) -> None:
    import gguf

    spec = TinySpec()
    weights, _ = make_weights(spec)
    path = write_gguf(spec, weights, tmp_path / "tiny.gguf")
    # Rewrite one tensor's type id in place to IQ2_XXS (16): same header size, a type we cannot dequantize.
    reader = gguf.GGUFReader(path)
    field = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    data = bytearray(path.read_bytes())
    name = field.name.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, int(gguf.GGMLQuantizationType.IQ2_XXS))
    path.write_bytes(bytes(data))
    assert_clean_error(llamarun(home, "run", str(path), "hi"), "IQ2_XXS")


def test_bad_sampling_flag(home: Path) -> None:
    assert_clean_error(llamarun(home, "run", "smollm2:135m", "hi", "--top-p", "1.5"), "top_p")


def test_prompt_longer_than_context(home: Path) -> None:
    assert_clean_error(llamarun(home, "run", "smollm2:135m", "word " * 600, "--ctx", "256"), "context")


def test_nothing_half_written_after_a_failed_run(home: Path) -> None:
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    llamarun(home, "run", "no-such-model", "hi")
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before


def test_cuda_on_a_machine_without_it(home: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_clean_error(llamarun(home, "run", "smollm2:135m", "hi", "--device", "cuda"), "CUDA")
    assert_clean_error(llamarun(home, "run", "smollm2:135m", "hi", "--device", "tpu"), "tpu")


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(home: Path) -> None:
    """Ctrl-C during a long answer drops that turn; the next question gets its own answer at once."""
    import signal

    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    master, slave = pty.openpty()
    # Ctrl-C as a terminal delivers it: a shell's background job inherits SIGINT ignored, which Python keeps, so
    # the child starts with the default disposition whatever launched the test run.
    proc = subprocess.Popen([sys.executable, "-m", "llamarun.cli.main", "run", "smollm2:135m", "--temperature", "0",
                             "--num-predict", "2000"], stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    seen: list[str] = []

    def answer_started(prompts: int) -> None:
        """Read stdout until the answer after the `prompts`-th prompt has begun (a fixed sleep raced the load)."""
        import select

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = "".join(seen)
            if text.count(">>> ") >= prompts and len(text.split(">>> ")[prompts].strip()) >= 20:
                return
            if select.select([proc.stdout], [], [], 0.5)[0]:
                seen.append(os.read(proc.stdout.fileno(), 4096).decode(errors="replace"))
        raise AssertionError(f"no answer began: {''.join(seen)!r}")

    try:
        os.write(master, b"Write a very long essay about the history of Rome.\n")
        answer_started(1)  # loaded, and into a 2000-token answer
        proc.send_signal(signal.SIGINT)
        os.write(master, b"Now write a long poem about the sea.\n")
        answer_started(2)
        proc.send_signal(signal.SIGINT)
        os.write(master, b"/bye\n")
        rest, err = proc.communicate(timeout=120)
        out = "".join(seen) + rest
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    answers = out.split(">>> ")
    assert len(answers) >= 4, out  # a prompt after each interrupted answer, then /bye
    assert answers[1].strip() and answers[2].strip(), out  # both questions got (cut) answers
