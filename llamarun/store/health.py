"""The store heals itself (issue 10, item 8): leftovers of killed pulls go, corrupt entries are found.

- Staging and trash folders are named after the process that made them (`tmp/pull-<pid>-*`); any whose
  process is gone (a pull killed with SIGKILL) is removed the next time the store stages a pull or a
  server starts. Folders of live processes, such as a pull running beside us, are left alone.
- An entry whose manifest cannot be read is skipped by `list` and replaced by `pull` (`drop_unreadable`).
- `verify_entry` checks an entry's files against its manifest: present, the recorded size, and (with
  `hashes`) the recorded sha256, which catches zeroed or truncated weights that still load.
- `entry_problems` is that check for one `name:tag`, an unreadable manifest included; `list` runs it
  without hashes (a stat per file) to mark damaged entries, `verify` and `show --verify` with them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llamarun.errors import CheckpointError
from llamarun.store.home import MANIFEST, Manifest, ModelStore, sha256_file

log = logging.getLogger("llamarun.store")
_OWNED = re.compile(r"^(?:pull|trash)-(\d+)-")
_UNOWNED = re.compile(r"^(?:pull|trash)-")  # made before folders carried their pid
UNOWNED_AGE_SECONDS = 24 * 3600  # without a pid, only a day-old folder is surely abandoned


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_tmp(store: ModelStore) -> list[Path]:
    """Remove staging/trash folders whose process is gone; return what was removed."""
    if not store.tmp.is_dir():
        return []
    removed = []
    now = time.time()
    for item in store.tmp.iterdir():
        owner = _OWNED.match(item.name)
        if owner is not None:
            stale = not _alive(int(owner.group(1)))
        elif _UNOWNED.match(item.name):
            try:
                stale = now - item.stat().st_mtime > UNOWNED_AGE_SECONDS
            except OSError:
                continue
        else:
            continue
        if stale:
            shutil.rmtree(item, ignore_errors=True)
            if not item.exists():
                removed.append(item)
    if removed:
        log.info("removed %d folder(s) left by interrupted pulls in %s", len(removed), store.tmp)
    return removed


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an entry's files."""

    path: str
    what: str  # "missing", "size", "sha256"
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


def entry_base(manifest: Manifest) -> Path:
    """The folder the manifest's file paths are relative to."""
    path = manifest.model_path
    return path if path.is_dir() else path.parent


def verify_entry(manifest: Manifest, *, hashes: bool = True) -> list[Problem]:
    """What is wrong with `manifest`'s files (empty: it is intact). `hashes` re-reads every byte."""
    if not manifest.model_path.exists():
        return [Problem(manifest.path, "missing", f"the model file {manifest.model_path} is gone")]
    base = entry_base(manifest)
    problems = []
    for record in manifest.files:
        file = base / record.path
        try:
            size = file.stat().st_size
        except OSError:
            problems.append(Problem(record.path, "missing", f"{file} is missing"))
            continue
        if size != record.size:
            problems.append(Problem(record.path, "size", f"{size} bytes on disk, {record.size} when pulled "
                                                        "(truncated or replaced)"))
        elif hashes and record.sha256 and sha256_file(file) != record.sha256:
            problems.append(Problem(record.path, "sha256", f"its sha256 is not the one recorded at pull "
                                                          f"({record.sha256[:12]}...): the data is corrupt"))
    return problems


def entry_problems(store: ModelStore, name: str, tag: str, *, hashes: bool = True) -> list[str]:
    """One line per thing wrong with the entry `name:tag` (empty: intact); an unreadable manifest is one."""
    try:
        manifest = store.get(name, tag)
    except CheckpointError as err:
        return [f"the manifest cannot be read: {err.message}"]
    return [str(p) for p in verify_entry(manifest, hashes=hashes)] if manifest is not None else []


def entry_refs(store: ModelStore) -> list[tuple[str, str]]:
    """(name, tag) of every entry with a manifest file, readable or not, sorted."""
    if not store.models.is_dir():
        return []
    found = sorted(p.parent.relative_to(store.models) for p in store.models.rglob(MANIFEST))
    return [("/".join(p.parts[:-1]), p.parts[-1]) for p in found]


def short_problem(problems: list[Problem]) -> str:
    """A few words for `list`: what kind of damage, and to which file."""
    first = problems[0]
    kind = {"missing": "missing", "size": "truncated", "sha256": "corrupt"}[first.what]
    more = f" +{len(problems) - 1}" if len(problems) > 1 else ""
    return f"{kind}: {Path(first.path).name}{more}"


def drop_unreadable(store: ModelStore, name: str, tag: str) -> bool:
    """Remove `name:tag` if its manifest cannot be read, so a pull can replace it; True if it went."""
    if not store.has(name, tag):
        return False
    try:
        store.get(name, tag)
        return False
    except CheckpointError:
        log.warning("replacing the unreadable store entry %s:%s", name, tag)
        store.remove(name, tag)
        return True
