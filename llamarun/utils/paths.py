"""Paths as users type them."""

from __future__ import annotations

from pathlib import Path


def user_path(text: str | Path) -> Path:
    """`~` expanded where it names a home folder; "~0" or an unknown user's `~name` stays as typed."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)
