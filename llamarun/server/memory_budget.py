"""The server's memory budget (`serve --memory-budget`), enforced at load (issue 10, item 7).

Before a model loads, idle models are unloaded (least recently used first) until it fits next to the
models in use and the loads in flight; if it still does not fit, the request is refused with a 503
naming what it needs and what is free, instead of loading anyway and risking an out-of-memory kill.
The refusal carries Retry-After when models in use (or loading) could be unloaded later and make room;
a model that cannot fit even then (next to the pinned, served model) gets no Retry-After.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamarun.errors import DoesNotFitError
from llamarun.utils.memory import _gb

if TYPE_CHECKING:
    from llamarun.store.resolve import ResolvedModel

RETRY_AFTER_SECONDS = 10  # a guess: leases usually end within a generation's time


class OverBudgetError(DoesNotFitError):
    """A model that does not fit the server's memory budget now; `retry_after` (seconds) when it may later."""

    def __init__(self, message: str, hint: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Holder:
    """Memory held by one loaded (or loading) model, and whether it could be given back."""

    name: str
    nbytes: int
    idle: bool  # unloadable now: no lease, no request waiting for it, not pinned
    pinned: bool  # the served model: never unloaded to make room


def choose_victims(name: str, need: int, budget: int, holders: Sequence[Holder]) -> list[str]:
    """The idle models to unload (in the order given: least recently used first) so `need` bytes fit.

    Raises OverBudgetError when unloading every idle model is not enough.
    """
    used = sum(h.nbytes for h in holders)
    victims = []
    for h in holders:
        if used + need <= budget:
            break
        if h.idle:
            victims.append(h.name)
            used -= h.nbytes
    if used + need <= budget:
        return victims
    free_now = max(budget - sum(h.nbytes for h in holders if h.name not in victims), 0)
    busy = [h for h in holders if not h.idle and not h.pinned]
    pinned = sum(h.nbytes for h in holders if h.pinned)
    fits_later = pinned + need <= budget and busy
    message = (f"{name} needs {_gb(need)} but only {_gb(free_now)} of the server's {_gb(budget)} memory "
               f"budget is free")
    if fits_later:
        held = ", ".join(f"{h.name} ({_gb(h.nbytes)})" for h in busy)
        hint = f"models in use hold the rest: {held}; retry when they are unloaded"
        raise OverBudgetError(message, hint, retry_after=RETRY_AFTER_SECONDS)
    hint = ("it cannot fit next to the served model" if pinned else "it is larger than the whole budget")
    raise OverBudgetError(message, f"{hint}; use a smaller model or start the server with a larger "
                                   "--memory-budget")


def checkpoint_size(target: ResolvedModel | str) -> int:
    """The checkpoint's size on disk, the first estimate of a model's memory: loaded weights take at least that."""
    try:
        path = target.path  # type: ignore[union-attr]
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except Exception:
        return 0
