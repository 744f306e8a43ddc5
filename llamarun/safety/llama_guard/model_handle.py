"""Where a Llama Guard gets its model: one already loaded, or a name leased from a ModelSource per check.

The server's ModelManager is a ModelSource: leasing the guard through it puts the guard on the same engine
hub, memory budget, keep-alive and /api/ps as every other model, and its requests are batched with the
main model's steps on the hub's one thread. The CLI and tests hand a loaded ServedModel in directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from llamarun.llm.chat_service import ModelSource
    from llamarun.llm.served import ServedModel


class GuardModel(Protocol):
    """Lends the guard its model for the length of one check."""

    name: str

    def use(self) -> AbstractAsyncContextManager[ServedModel]:
        """An async context manager yielding the model."""
        ...


class LoadedModel:
    """A model the caller loaded and owns (shutting it down is the caller's business)."""

    def __init__(self, served: ServedModel) -> None:
        self.served, self.name = served, served.name

    @asynccontextmanager
    async def use(self) -> AsyncIterator[ServedModel]:
        yield self.served


class LeasedModel:
    """A model name (catalog name, store name or path) that `source` resolves, loads and shares.

    Each check acquires a lease and releases it after, so an idle guard can be unloaded like any model.
    """

    def __init__(self, source: ModelSource, name: str, *, keep_alive: float | None = None) -> None:
        self.source, self.name, self.keep_alive = source, name, keep_alive

    @asynccontextmanager
    async def use(self) -> AsyncIterator[ServedModel]:
        lease = await self.source.acquire(self.name, keep_alive=self.keep_alive)
        try:
            yield lease.served
        finally:
            self.source.release(lease)
