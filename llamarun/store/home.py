"""The model store on disk: `$LLAMARUN_HOME/models/<name>/<tag>/manifest.json` plus the files.

An entry exists exactly when its manifest exists. Entries are built in a staging folder under
`$LLAMARUN_HOME/tmp/` (same file system) and renamed into place in one step, so a crash or Ctrl-C
never leaves a half-written entry; the folders a killed process leaves in `tmp/` are removed by the
next pull (store/health.py). One unreadable manifest hides only its own entry from `list`, and `rm`
or `pull` replace it. Hugging Face models are not copied: their manifest points into the
Hugging Face cache, which `huggingface_hub` manages (and resumes) itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamarun.errors import CheckpointError, ModelNotFoundError

log = logging.getLogger("llamarun.store")
MANIFEST = "manifest.json"
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def llamarun_home() -> Path:
    """`$LLAMARUN_HOME`, else `$XDG_CACHE_HOME/llamarun`, else `~/.cache/llamarun`."""
    env = os.environ.get("LLAMARUN_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "llamarun"


@dataclass
class FileRecord:
    """One file of an entry: its path (relative to the model path's folder), size, and sha256 if known."""

    path: str
    size: int
    sha256: str | None = None


@dataclass
class Manifest:
    """What the store knows about one pulled model."""

    name: str
    tag: str
    source: str
    format: str
    path: str  # the model (a file or folder); relative to the entry folder, or absolute (HF cache)
    files: list[FileRecord] = field(default_factory=list)
    size: int = 0
    pulled_at: float = field(default_factory=time.time)
    defaults: dict[str, Any] | None = None  # a created model's settings (store/model_defaults.py)
    entry_dir: Path | None = field(default=None, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def model_path(self) -> Path:
        p = Path(self.path)
        if p.is_absolute() or self.entry_dir is None:
            return p
        return self.entry_dir / p

    @property
    def id(self) -> str:
        """A short content id (like `ollama list`): the sha256 of the file list and hashes."""
        if len(self.files) == 1 and self.files[0].sha256:
            return self.files[0].sha256[:12]
        blob = json.dumps([(f.path, f.size, f.sha256) for f in self.files], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("entry_dir")
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], entry_dir: Path | None = None) -> Manifest:
        files = [FileRecord(**f) for f in data.get("files", [])]
        keys = ("name", "tag", "source", "format", "path", "size", "pulled_at", "defaults")
        return cls(**{k: data[k] for k in keys if k in data}, files=files, entry_dir=entry_dir)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_part(part: str, what: str) -> str:
    if not _SAFE_PART.match(part) or ".." in part:
        raise ModelNotFoundError(f"invalid model {what} '{part}'", "use letters, digits, '.', '_' and '-'")
    return part


class ModelStore:
    """The store under one root folder (default: `llamarun_home()`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else llamarun_home()
        self.models = self.root / "models"
        self.tmp = self.root / "tmp"

    def entry_dir(self, name: str, tag: str) -> Path:
        # Names may hold one '/' (Hugging Face `org/repo`): each part is checked, so no '..' escapes.
        parts = [_check_part(p, "name") for p in name.split("/")]
        return self.models.joinpath(*parts, _check_part(tag, "tag"))

    def get(self, name: str, tag: str) -> Manifest | None:
        """The manifest of `name:tag`, or None when not pulled."""
        return self._read(self.entry_dir(name, tag) / MANIFEST)

    def has(self, name: str, tag: str) -> bool:
        """True when `name:tag` has an entry, readable or not."""
        return (self.entry_dir(name, tag) / MANIFEST).is_file()

    def list(self) -> list[Manifest]:
        """Every readable entry, newest first; an unreadable manifest is logged and skipped, not fatal."""
        if not self.models.is_dir():
            return []
        found = []
        for path in self.models.rglob(MANIFEST):
            try:
                manifest = self._read(path)
            except CheckpointError as err:
                log.warning("%s", err)
                continue
            if manifest is not None:
                found.append(manifest)
        return sorted(found, key=lambda m: -m.pulled_at)

    def _read(self, path: Path) -> Manifest | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise CheckpointError(f"store manifest {path} is unreadable: {err}",
                                  "remove it with `llamarun rm` and pull the model again") from err
        return Manifest.from_dict(data, entry_dir=path.parent)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder inside the store for building an entry; removed on exit unless committed."""
        from llamarun.store.health import clean_stale_tmp

        clean_stale_tmp(self)
        self.tmp.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"pull-{os.getpid()}-", dir=self.tmp))  # the pid marks it as ours
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staged: Path, manifest: Manifest) -> Manifest:
        """Write the manifest into `staged` and move it into place as `name:tag` in one rename."""
        (staged / MANIFEST).write_text(manifest.to_json())
        target = self.entry_dir(manifest.name, manifest.tag)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            self._discard(target)  # a re-pull replaces the old entry
        try:
            os.rename(staged, target)
        except OSError:
            # Another process committed the same entry first; theirs is as good as ours.
            if not (target / MANIFEST).exists():
                raise
        result = self.get(manifest.name, manifest.tag)
        assert result is not None
        return result

    def copy(self, name: str, tag: str, new_name: str, new_tag: str, *,
             defaults: dict[str, Any] | None = None) -> Manifest:
        """A second entry `new_name:new_tag` of the same model (files hard-linked where the file system allows);
        `defaults` replaces the source's settings (store/model_defaults.py) when given."""
        source = self.get(name, tag)
        if source is None:
            raise ModelNotFoundError(f"model '{name}:{tag}' is not in the store", "see `llamarun list`")
        self.entry_dir(new_name, new_tag)  # checks the new name before any file is made
        src_dir = self.entry_dir(name, tag)
        with self.staging() as staged:
            for item in src_dir.rglob("*"):
                if item.name == MANIFEST and item.parent == src_dir:
                    continue
                dest = staged / item.relative_to(src_dir)
                if item.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(item, dest)  # weights are large and never written in place: share them
                except OSError:
                    shutil.copy2(item, dest)
            settings = defaults if defaults is not None else source.defaults
            return self.commit(staged, dataclasses.replace(source, name=new_name, tag=new_tag, defaults=settings,
                                                           pulled_at=time.time(), entry_dir=None))

    def remove(self, name: str, tag: str) -> Manifest:
        """Delete an entry (its manifest and owned files), even one whose manifest is unreadable;
        raises ModelNotFoundError if absent."""
        try:
            manifest = self.get(name, tag)
        except CheckpointError:  # corrupt: the entry goes all the same, which is the repair
            manifest = Manifest(name, tag, source="unknown", format="unknown", path="")
        if manifest is None:
            raise ModelNotFoundError(f"model '{name}:{tag}' is not in the store", "see `llamarun list`")
        target = self.entry_dir(name, tag)
        self._discard(target)
        # Prune now-empty family folders so `models/` mirrors what `list` shows.
        parent = target.parent
        while parent != self.models and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
        return manifest

    def _discard(self, target: Path) -> None:
        # Rename first so the entry vanishes atomically, then delete at leisure.
        self.tmp.mkdir(parents=True, exist_ok=True)
        trash = Path(tempfile.mkdtemp(prefix=f"trash-{os.getpid()}-", dir=self.tmp))
        os.rename(target, trash / "entry")
        shutil.rmtree(trash, ignore_errors=True)
