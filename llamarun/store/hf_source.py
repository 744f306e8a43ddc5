"""Fetching Hugging Face repos through `huggingface_hub` (its cache, its resume, its token handling).

The store never copies Hub files: a pulled repo is a manifest pointing at a snapshot folder (or one
file) in the Hugging Face cache. With `HF_HUB_OFFLINE=1`, or when the Hub cannot be reached, models
resolve from that cache alone. `huggingface_hub` is imported inside the functions: `llamarun list`
must not pay for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llamarun.errors import DownloadError
from llamarun.store.catalog import HFSource
from llamarun.store.home import FileRecord, Manifest

_TRUE = {"1", "true", "yes", "on"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def hf_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks for no network (read now, not at import like huggingface_hub does)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        home = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return Path(home).expanduser() / "hub"


def fetch(source: HFSource, *, local_only: bool = False) -> Path:
    """Download (or find in the cache) `source`; return the snapshot folder, or the file for one-file sources.

    Raises DownloadError with what to do: accept a license, set HF_TOKEN, check the name, go online.
    """
    local_only = local_only or hf_offline()
    try:
        return _call(source, local_only=local_only)
    except Exception as err:
        known = _translate(err, source, local_only)
        if known is not None:
            raise known from err
        if local_only:
            raise DownloadError(f"could not read {source.repo_id} from the Hugging Face cache: {err}",
                                "pull it again while online") from err
        # An unexpected transport failure: the cache may still hold the files.
        try:
            return _call(source, local_only=True)
        except Exception:
            raise DownloadError(f"could not download {source.repo_id}: {type(err).__name__}: {err}",
                                "check the network, or set HF_HUB_OFFLINE=1 to use cached files") from err


def _call(source: HFSource, *, local_only: bool) -> Path:
    import huggingface_hub

    token = os.environ.get("HF_TOKEN") or None
    common = dict(repo_type="model", revision=source.revision, cache_dir=str(hf_cache_dir()),
                  token=token, local_files_only=local_only)
    if source.filename:
        return Path(huggingface_hub.hf_hub_download(source.repo_id, source.filename, **common))
    return Path(huggingface_hub.snapshot_download(
        source.repo_id, allow_patterns=list(source.allow_patterns),
        ignore_patterns=list(source.ignore_patterns), **common))


def _translate(err: Exception, source: HFSource, local_only: bool) -> DownloadError | None:
    """A DownloadError for the hub exceptions we understand, else None."""
    from huggingface_hub import errors as hub

    repo, url = source.repo_id, f"https://huggingface.co/{source.repo_id}"
    if isinstance(err, hub.GatedRepoError):
        return DownloadError(f"{repo} is a gated repo and this account has no access",
                             f"accept the license at {url} and set HF_TOKEN to a token of that account")
    if isinstance(err, hub.RepositoryNotFoundError):
        return DownloadError(f"Hugging Face repo {repo} was not found",
                             "check the name; a private repo also needs HF_TOKEN")
    if isinstance(err, hub.RevisionNotFoundError):
        return DownloadError(f"revision '{source.revision}' of {repo} was not found", f"see {url}")
    if isinstance(err, hub.IncompleteSnapshotError):
        return DownloadError(f"the cached copy of {repo} is incomplete and the Hub cannot be reached",
                             "go online and pull again to finish the download")
    if isinstance(err, hub.LocalEntryNotFoundError):
        where = hf_cache_dir()
        if local_only:
            why = "HF_HUB_OFFLINE is set" if hf_offline() else "only the local cache was searched"
            return DownloadError(f"{repo} is not in the Hugging Face cache at {where} ({why})",
                                 "unset HF_HUB_OFFLINE and pull it while online")
        return DownloadError(f"could not reach the Hugging Face Hub and {repo} is not cached at {where}",
                             "check the network (or a proxy), then pull again")
    if isinstance(err, hub.EntryNotFoundError):
        return DownloadError(f"{repo} has no file {source.filename}", f"see the file list at {url}")
    if isinstance(err, hub.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            return DownloadError(f"the Hub refused access to {repo} (401 unauthorized)",
                                 f"set HF_TOKEN to a valid token; gated models need their license "
                                 f"accepted at {url}")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return DownloadError(f"the Hugging Face Hub failed for {repo}: {first}", "try again later")
    if isinstance(err, OSError) and not isinstance(err, ConnectionError):
        return DownloadError(f"could not write {repo} to the Hugging Face cache: {err}",
                             "check free disk space and permissions of the HF cache (HF_HOME)")
    return None


def snapshot_manifest(name: str, tag: str, source: HFSource, path: Path, fmt: str) -> Manifest:
    """A store manifest pointing at `path` in the HF cache (a snapshot folder or one file)."""
    # Keep the snapshot path (a symlink to blobs/<hash>), not its target: it has the real file name.
    path = path.absolute()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    base = path.parent if path.is_file() else path
    records = [FileRecord(str(f.relative_to(base)), f.stat().st_size, _blob_sha256(f)) for f in files]
    return Manifest(name=name, tag=tag, source=source.describe(), format=fmt, path=str(path),
                    files=records, size=sum(r.size for r in records))


def _blob_sha256(file: Path) -> str | None:
    """LFS blobs in the HF cache are named by their sha256: a free, trustworthy hash."""
    if file.is_symlink():
        target = Path(os.readlink(file)).name
        if _SHA256.match(target):
            return target
    return None
