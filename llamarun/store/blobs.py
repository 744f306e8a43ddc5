"""Uploaded files by content: `$LLAMARUN_HOME/blobs/sha256-<hex>`, as Ollama's `/api/blobs` fills them.

A client uploads a GGUF or safetensors file once (`POST /api/blobs/sha256:<hex>`), then names it by
digest in `/api/create`. An upload streams into a temporary file in the store's `tmp/` (same file
system), hashing as it goes, and is renamed into place only when its sha256 equals the digest it was
sent under: a blob's name always tells the truth about its bytes, and a cut or wrong upload leaves
nothing behind. Entries made from blobs hard-link them, so creating a model copies no weights.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from llamarun.errors import RequestError

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


def parse_digest(text: str) -> str:
    """`sha256:<64 hex>` (or Ollama's file-name form `sha256-<hex>`) -> the hex; anything else is a RequestError."""
    m = _DIGEST.match(text.strip().lower()) if isinstance(text, str) else None
    if m is None:
        raise RequestError(f"invalid digest '{str(text)[:100]}': expected 'sha256:' and 64 hex digits",
                           param="digest", code="invalid_digest")
    return m.group(1)


class BlobStore:
    """The blob folder of one store root."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "blobs"
        self.tmp = Path(root) / "tmp"

    def path(self, digest: str) -> Path:
        """Where the blob with this digest lives (whether or not it is there)."""
        return self.dir / f"sha256-{parse_digest(digest)}"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def upload(self, digest: str) -> BlobUpload:
        """Start receiving the bytes of the blob `digest`; call `finish()` or `abort()`."""
        return BlobUpload(self, parse_digest(digest))


class BlobUpload:
    """One upload in progress: bytes go to a temporary file and into a running sha256."""

    def __init__(self, blobs: BlobStore, expected_hex: str) -> None:
        self.blobs, self.expected = blobs, expected_hex
        blobs.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="blob-", dir=blobs.tmp)
        self.temp = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.file.write(data)
        self.size += len(data)

    def finish(self) -> Path:
        """Check the digest and move the file into place; a mismatch removes it and raises RequestError."""
        self.file.close()
        actual = self.hash.hexdigest()
        if actual != self.expected:
            self.abort()
            raise RequestError(f"digest mismatch: the {self.size}-byte body has sha256:{actual}, "
                               f"not sha256:{self.expected}", param="digest", code="digest_mismatch")
        self.blobs.dir.mkdir(parents=True, exist_ok=True)
        target = self.blobs.dir / f"sha256-{self.expected}"
        os.replace(self.temp, target)  # the same bytes if another upload won: replacing is harmless
        return target

    def abort(self) -> None:
        """Drop what was received (a cut connection, a wrong digest)."""
        self.file.close()
        self.temp.unlink(missing_ok=True)
