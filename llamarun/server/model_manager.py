"""Which models are loaded: lazy loading on first use, a memory budget, and Ollama's keep_alive.

A request leases a model (`acquire` ... `release`); a leased model is never unloaded. When the last
lease ends, the model stays for that request's keep_alive (seconds; negative keeps it forever, 0
unloads it at once), then a reaper unloads it. Before loading, idle models are unloaded, least
recently used first, until the new one fits the budget next to the models in use and the loads in
flight, else the request gets a 503 (memory_budget.py); if the loader still says it does not fit,
every idle model goes and the load is tried once more.

The models named on `llamarun serve` are pinned (`preload`): they keep the keep_alive the operator
gave (forever unless `serve --keep-alive`), whatever keep_alive a client sends, a client's unload
(keep_alive 0) leaves them loaded, and making room for other models never evicts them.

Loads run in a worker thread (they take seconds), one per model name: concurrent first requests for
a model wait for the same load, and requests for models already loaded are never held up by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llamarun.errors import DoesNotFitError
from llamarun.server.memory_budget import Holder, OverBudgetError, checkpoint_size, choose_victims

if TYPE_CHECKING:  # the server imports no torch until a model loads
    from llamarun.llm.served import ServedModel
    from llamarun.store.resolve import ResolvedModel

log = logging.getLogger("llamarun.server")
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's 5 minutes
FOREVER = -1.0

# (the resolved model, or its canonical name with a custom resolver; context length or None) -> model
Loader = Callable[["ResolvedModel | str", "int | None"], "ServedModel"]
Resolver = Callable[[str], str]  # what a user typed -> the canonical name (raises ModelNotFoundError)
Estimator = Callable[["ResolvedModel | str"], int]  # -> bytes it will take loaded, before its first load


@dataclass(eq=False)
class ModelSlot:
    """One model in memory and its bookkeeping."""

    name: str
    served: ServedModel
    requested_ctx: int | None
    loaded_at: float
    keep_alive: float
    active: int = 0
    last_used: float = 0.0
    expires_at: float | None = None  # wall clock; None while leased or when kept forever
    unload_when_idle: bool = False  # asked to unload while leased
    pinned: bool = False  # the model named on `llamarun serve`: no client reloads or unloads it

    @property
    def memory_bytes(self) -> int:
        return self.served.memory_bytes

    def fits_ctx(self, ctx: int | None) -> bool:
        """True if a request for context `ctx` (None: the model's default) would load this same model."""
        return ctx == self.requested_ctx or (ctx is not None and ctx == self.served.context_length)

    @property
    def shared(self) -> bool:
        """Reloading it would change the model under other clients: it is leased, or it is the served model."""
        return self.active > 0 or self.pinned


@dataclass(eq=False)
class Lease:
    """A request's hold on a loaded model; `load_seconds` is what this request waited for the load."""

    model: ModelSlot
    keep_alive: float
    load_seconds: float = 0.0
    released: bool = field(default=False, repr=False)

    @property
    def served(self) -> ServedModel:
        return self.model.served


class ModelManager:
    """Loads, shares, times out and unloads models for the server."""

    def __init__(self, loader: Loader | None = None, *, resolve: Resolver | None = None,
                 memory_budget: int | None = None, keep_alive: float = DEFAULT_KEEP_ALIVE,
                 context_length: int | None = None, clock: Callable[[], float] = time.time,
                 on_load: Callable[[str], None] | None = None, estimate: Estimator | None = None,
                 models_dirs: Sequence[str] = (), one_at_a_time: bool = False) -> None:
        """`one_at_a_time`: hold one model at most (a tensor/pipeline-parallel server: its ranks serve one)."""
        from llamarun.server.local_paths import LocalPaths

        self.loader = loader or default_loader()
        self.local_paths = LocalPaths(models_dirs)  # checkpoint paths clients may name (none by default)
        self.resolve = resolve or self._resolve_in_store
        self.estimate = estimate or (checkpoint_size if resolve is None else (lambda _name: 0))
        self._resolved: dict[str, ResolvedModel] = {}  # what the last acquire found, for the load that follows
        self.memory_budget = memory_budget
        self.keep_alive = keep_alive
        self.context_length = context_length
        self.clock = clock
        self.on_load = on_load
        self._models: dict[str, ModelSlot] = {}
        self._loading: dict[str, asyncio.Task[ModelSlot]] = {}
        self._wanted: Counter[str] = Counter()  # requests waiting for a load: never evict those models
        self._pinned: dict[str, float] = {}  # the served models -> their keep_alive, which clients cannot change
        self._sizes: dict[str, int] = {}  # memory of earlier loads, to plan the next one
        self._reserved: dict[str, int] = {}  # loads in flight -> the bytes they were let in with
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Future] = set()
        self._closed = False
        self.one_at_a_time = one_at_a_time

    def _resolve_in_store(self, name: str) -> str:
        """The canonical name; where it lives is kept so the load does not resolve it again."""
        from llamarun.server.store_info import resolve

        self.local_paths.check(name)
        resolved = resolve(name)
        self._resolved[resolved.name] = resolved
        return resolved.name

    # ----- leases -----

    async def acquire(self, name: str, *, num_ctx: int | None = None,
                      keep_alive: float | None = None) -> Lease:
        """Lease the model `name`, loading it (and unloading idle ones) if needed.

        A `num_ctx` other than the loaded model's reloads it only when nobody else could notice: when
        it is idle and not the served model. Otherwise the request gets the loaded model as it is, and
        the chat service's prompt check refuses a prompt that does not fit, naming the loaded context.
        """
        key = await asyncio.to_thread(self.resolve, name)
        keep = self.keep_alive if keep_alive is None else keep_alive
        ctx = num_ctx if num_ctx is not None else self.context_length
        t0 = time.perf_counter()
        waited = False
        self._wanted[key] += 1
        try:
            while True:
                async with self._lock:
                    lm = self._models.get(key)
                    if lm is not None and (lm.fits_ctx(ctx) or lm.shared):
                        if not lm.fits_ctx(ctx):
                            log.info("%s: num_ctx=%s not applied: the model is shared, loaded with %d tokens",
                                     key, ctx, lm.served.context_length)
                        lm.active += 1
                        lm.expires_at = None
                        lm.last_used = self.clock()
                        return Lease(lm, keep, time.perf_counter() - t0 if waited else 0.0)
                    if lm is not None:  # idle, but loaded with another context length: reload
                        self._drop(lm)
                        await self._shutdown(lm)
                    task = self._loading.get(key)
                    if task is None:
                        task = asyncio.ensure_future(self._load(key, ctx, keep))
                        self._loading[key] = task
                waited = True
                await asyncio.shield(task)
        finally:
            self._wanted[key] -= 1
            if self._wanted[key] <= 0:
                del self._wanted[key]

    def release(self, lease: Lease) -> None:
        """End a lease; the model expires after the lease's keep_alive once nobody uses it."""
        if lease.released:
            return
        lease.released = True
        lm = lease.model
        lm.active -= 1
        # A served (pinned) model keeps the operator's keep_alive whatever the client sent.
        lm.keep_alive = 0.0 if lm.unload_when_idle else self._pinned.get(lm.name, lease.keep_alive)
        lm.last_used = self.clock()
        if lm.active > 0 or self._models.get(lm.name) is not lm:
            return
        lm.expires_at = None if lm.keep_alive < 0 else lm.last_used + lm.keep_alive
        if lm.keep_alive == 0:
            task = asyncio.ensure_future(self.expire())
            self._background.add(task)  # keep a reference until done, or the task may be collected
            task.add_done_callback(self._background.discard)

    # ----- loading and unloading -----

    async def _load(self, key: str, ctx: int | None, keep: float) -> ModelSlot:
        try:
            target = self._resolved.get(key, key)
            if self.one_at_a_time:
                await self._only(key)
            if self.memory_budget is not None and key not in self._sizes:
                self._sizes[key] = await asyncio.to_thread(self.estimate, target)
            await self._make_room(key, self._sizes.get(key, 0))  # OverBudgetError (503) if it cannot fit
            try:
                served = await asyncio.to_thread(self.loader, target, ctx)
            except DoesNotFitError:
                if not await self._make_room(key, 0, everything=True):
                    raise
                served = await asyncio.to_thread(self.loader, target, ctx)
            now = self.clock()
            keep = self._pinned.get(key, keep)
            lm = ModelSlot(key, served, ctx, now, keep, last_used=now)
            lm.expires_at = None if keep < 0 else now + keep
            async with self._lock:
                self._models[key] = lm
                self._sizes[key] = lm.memory_bytes
                self._reserved.pop(key, None)
            try:
                await self._make_room(key, lm.memory_bytes)  # bigger than planned: others make room, or it goes
            except OverBudgetError:
                self._drop(lm)
                await self._shutdown(lm)
                raise
            if self.on_load is not None:
                self.on_load(key)
            return lm
        finally:
            self._reserved.pop(key, None)
            self._loading.pop(key, None)

    async def _make_room(self, key: str, need: int, everything: bool = False) -> bool:
        """Unload idle models (least recently used first) so `key` fits the budget, reserving `need` bytes
        for its load; True if any went. Raises OverBudgetError when it cannot fit (memory_budget.py)."""
        async with self._lock:
            holders = [Holder(m.name, m.memory_bytes, idle=m.active == 0 and m.name not in self._wanted
                              and m.name not in self._pinned, pinned=m.name in self._pinned)
                       for m in sorted(self._models.values(), key=lambda m: m.last_used) if m.name != key]
            holders += [Holder(k, n, idle=False, pinned=False) for k, n in self._reserved.items() if k != key]
            if everything:
                victims = [h.name for h in holders if h.idle]
            elif self.memory_budget is None:
                victims = []
            else:
                victims = choose_victims(key, need, self.memory_budget, holders)
                if need and key not in self._models:
                    self._reserved[key] = need
            gone = [self._models[name] for name in victims]
            for victim in gone:
                self._drop(victim)
        for victim in gone:
            await self._shutdown(victim)
        return bool(gone)

    async def _only(self, key: str) -> None:
        """Unload every idle model before `key` loads; a 503 while another is in use, pinned or loading."""
        await self._make_room(key, 0, everything=True)
        busy = [m.name for m in self._models.values() if m.name != key] + [k for k in self._loading if k != key]
        if busy:
            raise OverBudgetError(f"this server splits each model over its ranks and holds one model at a time; "
                                  f"'{busy[0]}' is in use", "retry when it is idle, or start another server")

    def _drop(self, lm: ModelSlot) -> None:
        if self._models.get(lm.name) is lm:
            del self._models[lm.name]

    async def _shutdown(self, lm: ModelSlot) -> None:
        with contextlib.suppress(Exception):  # a model that fails to stop is gone all the same
            await asyncio.to_thread(lm.served.shutdown)

    async def unload(self, name: str, *, force: bool = False) -> bool:
        """Unload `name` now if it is loaded and idle (after its leases end otherwise); True if found.

        A pinned (served) model stays unless `force` (its files are being deleted); it unpins then.
        """
        key = await asyncio.to_thread(self.resolve, name)
        async with self._lock:
            lm = self._models.get(key)
            if lm is None:
                return False
            if key in self._pinned:
                if not force:
                    log.info("%s is the served model: a client cannot unload it", key)
                    return True
                del self._pinned[key]
                lm.pinned = False
            if lm.active > 0:
                lm.unload_when_idle = True  # the last release unloads it
                return True
            self._drop(lm)
        await self._shutdown(lm)
        return True

    async def expire(self) -> list[str]:
        """Unload every idle model whose keep_alive has run out; return their names."""
        now = self.clock()
        async with self._lock:
            gone = [m for m in self._models.values()
                    if m.active == 0 and m.name not in self._wanted and m.expires_at is not None
                    and m.expires_at <= now]
            for m in gone:
                self._drop(m)
        for m in gone:
            await self._shutdown(m)
        return [m.name for m in gone]

    async def reap_forever(self, interval: float = 1.0) -> None:
        """Expire models every `interval` seconds until cancelled."""
        while not self._closed:
            await self.expire()
            await asyncio.sleep(interval)

    async def preload(self, name: str, *, keep_alive: float = FOREVER) -> ModelSlot:
        """Load and pin `name` now (the model given to `llamarun serve`): kept for `keep_alive` after its last
        use whatever keep_alive clients send (negative: forever), and never reloaded for a client's num_ctx."""
        self.local_paths.trusted.add(name)  # the operator named it: a path is fine
        self._pinned[await asyncio.to_thread(self.resolve, name)] = keep_alive
        lease = await self.acquire(name, keep_alive=keep_alive)
        lease.model.pinned = True
        self.release(lease)
        return lease.model

    async def close(self) -> None:
        """Unload everything (server shutdown)."""
        self._closed = True
        for task in list(self._loading.values()):
            with contextlib.suppress(BaseException):
                await task
        async with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for m in models:
            await self._shutdown(m)

    # ----- reporting -----

    def get(self, name: str) -> ModelSlot | None:
        """The loaded model under its canonical name, if any."""
        return self._models.get(name)

    def loaded(self) -> list[ModelSlot]:
        """The loaded models, most recently used first."""
        return sorted(self._models.values(), key=lambda m: -m.last_used)

    def expires_at(self, lm: ModelSlot) -> float | None:
        """When `lm` will unload if no request comes (None: never); leased models count from now."""
        if lm.expires_at is not None:
            return lm.expires_at
        return None if lm.keep_alive < 0 else self.clock() + lm.keep_alive


def default_loader(*, device: str | None = None, weights: str = "auto",
                   max_kv_tokens: int | None = None) -> Loader:
    """Loads models with the batched engine (torch is imported on the first load only)."""

    def load(name: ResolvedModel | str, context_length: int | None) -> ServedModel:
        from llamarun.llm.async_llm import AsyncLLM

        return AsyncLLM(name, context_length=context_length, device=device, weights=weights,
                        max_kv_tokens=max_kv_tokens)

    return load
