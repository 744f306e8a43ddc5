"""Give freed heap memory back to the operating system after a large input (issue 10, item 5).

A large prompt is tokenized into large native buffers (a Hugging Face `Encoding` holds every token's
string and offsets: about 1 GB for an 8 MB prompt). When they are freed, glibc's malloc keeps the pages
for reuse, so a server that once tokenized a huge prompt stays that large. `malloc_trim(0)` hands free
pages of every arena back. It walks the heap, so it is called only after large inputs, never per token.
Elsewhere (musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> bool:
    """Return freed heap pages to the OS; whether the C library could (glibc only)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def then_release(large: bool, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, then, when `large`, the memory it freed goes back to the OS (whether it returned or raised)."""
    try:
        return fn(*args)
    finally:
        if large:
            release_free_memory()
