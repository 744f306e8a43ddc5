"""Which checkpoint paths a client may name: none, unless they lie in a folder the operator allowed.

A server that loads any path a client names reads any file the server can (`{"model": "/etc/shadow"}`), and its
errors tell files, folders and missing paths apart. So a path is refused before the file system is touched,
unless it lies inside a `--models-dir` folder or is the model the operator named on `llamarun serve`; the
refusal reads like any unknown model. Store names (`smollm2:135m`, `org/repo`) are not paths and are not affected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from llamarun.errors import ModelNotFoundError
from llamarun.store.resolve import names_a_path


class LocalPaths:
    """The folders (and single models) clients may load from."""

    def __init__(self, folders: Iterable[str | Path] = ()) -> None:
        self.folders = [Path(os.path.realpath(os.path.expanduser(str(f)))) for f in folders]
        self.trusted: set[str] = set()  # names the operator gave (serve MODEL): allowed as they are

    def check(self, name: str) -> None:
        """Raise ModelNotFoundError for a path outside the allowed folders (store names pass)."""
        if not names_a_path(name) or name in self.trusted:
            return
        real = Path(os.path.realpath(os.path.expanduser(name)))  # no file is opened: only the name is resolved
        if not any(real == folder or folder in real.parents for folder in self.folders):
            raise ModelNotFoundError(f"model '{name[:200]}' not found (no such file or folder among those this "
                                     "server loads from)", "folders are allowed with llamarun serve --models-dir")
