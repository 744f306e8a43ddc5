"""`llamarun list` marks damaged entries, `llamarun show MODEL --verify` re-hashes a model (issue 10, item 8)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the store-health tests' entry writer
from test_store_health import put

from llamarun.store.default_model import install_default_model_from
from llamarun.store.home import MANIFEST, ModelStore

pytestmark = pytest.mark.timeout(180)
RUNNER = "import sys; from llamarun.cli.main import main; sys.exit(main(sys.argv[1:]))"


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def rows(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines()[1:]}


def test_list_marks_missing_truncated_and_unreadable_entries(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    put(store, "intact", b"a" * 1000)
    put(store, "gone", b"b" * 1000).model_path.unlink()
    cut = put(store, "cut", b"c" * 1000)
    cut.model_path.unlink()
    cut.model_path.write_bytes(b"c" * 10)
    put(store, "garbled", b"d" * 1000)
    (store.entry_dir("garbled", "latest") / MANIFEST).write_text("{not json")
    proc = cli(tmp_path, "list")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    listed = rows(proc.stdout)
    assert set(listed) == {"intact:latest", "gone:latest", "cut:latest", "garbled:latest"}
    assert listed["intact:latest"].rstrip().endswith("ago")  # an intact entry carries no mark
    assert "(missing: model.gguf)" in listed["gone:latest"]
    assert "(truncated: model.gguf)" in listed["cut:latest"]
    assert "(unreadable manifest)" in listed["garbled:latest"]
    hint = proc.stderr.strip().splitlines()[-1]
    assert hint.startswith("3 models are damaged") and "llamarun verify --repair" in hint
    assert all(ref in hint for ref in ("gone:latest", "cut:latest", "garbled:latest")) and "intact" not in hint
    # Once repaired (here: removed), the list is clean again and says nothing on stderr.
    for name in ("gone", "cut", "garbled"):
        assert cli(tmp_path, "rm", name).returncode == 0
    proc = cli(tmp_path, "list")
    assert list(rows(proc.stdout)) == ["intact:latest"] and "damaged" not in proc.stderr


@pytest.fixture
def home(tmp_path: Path, default_gguf: Path) -> Path:
    root = tmp_path / "home"
    install_default_model_from(default_gguf, ModelStore(root))  # a hard link: never write into it
    return root


def test_show_verify_rehashes_the_model(home: Path) -> None:
    proc = cli(home, "show", "smollm2", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "verified smollm2:135m: 1 file(s), sha256 as recorded at pull" in proc.stderr
    assert "architecture" in proc.stdout and "llama" in proc.stdout  # then the usual description
    # One byte changed, same size: loading would not notice, the hash does.
    path = ModelStore(home).get("smollm2", "135m").model_path
    data = bytearray(path.read_bytes())
    path.unlink()  # break the hard link to the shared test file first
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cli(home, "show", "smollm2").returncode == 0  # without --verify nothing is read beyond the header
    proc = cli(home, "show", "smollm2", "--verify")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: smollm2:135m is damaged") and "sha256" in proc.stderr
    assert "llamarun verify --repair smollm2:135m" in proc.stderr and proc.stdout == ""


def test_show_verify_of_what_is_not_stored(home: Path, tmp_path: Path, default_gguf: Path) -> None:
    local = tmp_path / "copy.gguf"
    shutil.copy(default_gguf, local)
    proc = cli(home, "show", str(local), "--verify")
    assert proc.returncode == 1 and "is not one" in proc.stderr and "Traceback" not in proc.stderr
    assert cli(home, "show", str(local)).returncode == 0  # a path still shows without --verify
    proc = cli(home, "show", "nothing:here", "--verify")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
