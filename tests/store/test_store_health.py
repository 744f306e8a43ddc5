"""The store heals itself (issue 10, item 8): killed pulls' folders go, corrupt entries are isolated,
replaced by rm/pull, and found by `llamarun verify`."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamarun.errors import CheckpointError
from llamarun.store.health import clean_stale_tmp, drop_unreadable, verify_entry
from llamarun.store.home import MANIFEST, FileRecord, Manifest, ModelStore

pytestmark = pytest.mark.timeout(120)
RUNNER = "import sys; from llamarun.cli.main import main; sys.exit(main(sys.argv[1:]))"
STAGE_AND_HANG = ("import sys, time; from pathlib import Path; from llamarun.store.home import ModelStore; "
                  "s = ModelStore(Path(sys.argv[1]))\n"
                  "with s.staging() as p:\n"
                  "    (p / 'blob').write_bytes(b'x' * 100_000); print(p, flush=True); time.sleep(60)")


def put(store: ModelStore, name: str, data: bytes, tag: str = "latest") -> Manifest:
    """A one-file GGUF-style entry holding `data`, with its sha256 recorded."""
    with store.staging() as staged:
        (staged / "model.gguf").write_bytes(data)
        record = FileRecord("model.gguf", len(data), hashlib.sha256(data).hexdigest())
        return store.commit(staged, Manifest(name, tag, "test", "gguf", "model.gguf", [record], len(data)))


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"LLAMARUN_HOME": str(home), "HF_HUB_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_a_pull_killed_with_sigkill_leaves_nothing_after_the_next_pull(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", STAGE_AND_HANG, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])})
    staged = Path(proc.stdout.readline().strip())
    assert staged.is_dir() and staged.name.startswith(f"pull-{proc.pid}-")
    assert clean_stale_tmp(store) == []  # its process still runs: a pull in progress is left alone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert staged.is_dir()  # SIGKILL ran no cleanup
    old = tmp_path / "tmp" / "pull-abc123"  # a folder from before folders carried a pid, a day old
    old.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    fresh = tmp_path / "tmp" / "pull-def456"
    fresh.mkdir()
    put(store, "m", b"weights")  # the next pull stages, which cleans first
    assert not staged.exists() and not old.exists() and fresh.exists()
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["pull-def456"]


def test_one_corrupt_manifest_hides_only_its_entry_and_rm_or_pull_replace_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    put(store, "good", b"ok")
    put(store, "bad", b"ok too")
    (store.entry_dir("bad", "latest") / MANIFEST).write_text("{not json")
    assert [m.ref for m in store.list()] == ["good:latest"]  # listing all models still works
    with pytest.raises(CheckpointError, match="llamarun rm"):
        store.get("bad", "latest")  # the model itself reports the fix
    assert drop_unreadable(store, "bad", "latest") and not store.has("bad", "latest")  # what pull does first
    assert not drop_unreadable(store, "good", "latest")
    put(store, "bad", b"again")
    (store.entry_dir("bad", "latest") / MANIFEST).write_bytes(b"\x00" * 10)
    proc = cli(tmp_path, "rm", "bad")
    assert proc.returncode == 0, proc.stderr
    assert not store.has("bad", "latest") and [m.ref for m in store.list()] == ["good:latest"]


def test_verify_finds_truncated_zeroed_and_missing_weights(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    data = bytes(range(256)) * 40
    intact = put(store, "intact", data)
    assert verify_entry(intact) == []
    zeroed = put(store, "zeroed", data)
    path = zeroed.model_path
    path.unlink()
    path.write_bytes(b"\x00" * len(data))  # same size: only the hash can tell
    assert verify_entry(zeroed, hashes=False) == []
    assert [p.what for p in verify_entry(zeroed)] == ["sha256"]
    cut = put(store, "cut", data)
    cut.model_path.unlink()
    cut.model_path.write_bytes(data[:100])
    assert [p.what for p in verify_entry(cut)] == ["size"]
    gone = put(store, "gone", data)
    gone.model_path.unlink()
    assert [p.what for p in verify_entry(gone)] == ["missing"]


def test_llamarun_verify_reports_each_model_and_the_fix(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    put(store, "intact", b"a" * 1000)
    bad = put(store, "zeroed", b"b" * 1000)
    bad.model_path.unlink()
    bad.model_path.write_bytes(b"\x00" * 1000)
    proc = cli(tmp_path, "verify", "intact")
    assert proc.returncode == 0 and "intact:latest: ok" in proc.stdout, proc.stderr
    proc = cli(tmp_path, "verify")
    assert proc.returncode == 1
    assert "intact:latest: ok" in proc.stdout and "zeroed:latest: BAD" in proc.stdout and "sha256" in proc.stdout
    assert "llamarun verify --repair zeroed:latest" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli(tmp_path, "verify", "--quick")  # sizes only: the zeroed file has the right size
    assert proc.returncode == 0, proc.stdout
    proc = cli(tmp_path, "verify", "nothing-here")
    assert proc.returncode == 1 and "not in the store" in proc.stderr


def test_verify_repair_pulls_a_bad_entry_again(tmp_path: Path, monkeypatch) -> None:
    from llamarun.cli import verify_cmd
    from llamarun.store import resolve

    store = ModelStore(tmp_path)
    monkeypatch.setenv("LLAMARUN_HOME", str(tmp_path))
    bad = put(store, "m", b"good bytes")
    bad.model_path.unlink()
    bad.model_path.write_bytes(b"bad bytes!")
    pulled = []

    def fake_pull(ref: str, *, store: ModelStore) -> Manifest:
        pulled.append(ref)
        return put(store, *ref.split(":")[:1], b"good bytes")

    monkeypatch.setattr(resolve, "pull_model", fake_pull)
    parser = __import__("argparse").ArgumentParser()
    verify_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["verify", "--repair"])
    assert args.handler(args) == 0
    assert pulled == ["m:latest"]
    manifest = store.get("m", "latest")
    assert manifest is not None and verify_entry(manifest) == []
