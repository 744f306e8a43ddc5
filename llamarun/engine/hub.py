"""The one loop that steps every loaded model's engine, for all AsyncLLMs of a process.

Engines are single-threaded, so one driver owns them all: requests and aborts arrive through a
queue, each busy engine takes one step per round, outputs go back to the requests' event loops.

Which thread drives matters on CPUs. libgomp (PyTorch's OpenMP) keeps a worker team per thread that
ever ran a parallel kernel, and once the teams together outnumber the cores it stops spin-waiting:
every kernel then pays a futex wake-up, and decoding runs 2-3x slower. So all torch work of served
models happens on the hub's one thread, loading included (`run_sync`). `llamarun serve` gives the hub
the main thread (`run_forever()`) and runs HTTP on another; elsewhere (tests, an application's own
event loop) the hub starts a background thread of its own on first use.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)
_HANDOVER = object()  # tells the background thread to leave the driving to run_forever's thread


class EngineHub:
    """Drives the engines of the AsyncLLMs attached to it."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[tuple[Callable[[], None] | None]] = queue.SimpleQueue()
        self._models: list[Any] = []  # AsyncLLMs whose engines this hub steps
        self._thread: threading.Thread | None = None
        self._external = False
        self._driver: threading.Thread | None = None  # the thread running _loop now
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the driving thread, between engine steps."""
        self._ensure_driver()
        self._inbox.put((fn,))

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the driving thread and wait for its result (or exception)."""
        if threading.current_thread() is self._driver:
            return fn()
        done: Future[T] = Future()

        def task() -> None:
            try:
                done.set_result(fn())
            except BaseException as err:
                done.set_exception(err)

        self.call(task)
        try:
            return done.result()
        except KeyboardInterrupt:
            # The work goes on (a load, say); leaving now could end the process while this hub's thread is
            # inside torch kernels, which aborts it. Let the work finish, then pass the interrupt on.
            with contextlib.suppress(BaseException):
                done.result()
            raise

    def attach(self, model: Any) -> None:
        self.call(lambda: self._models.append(model))

    def detach(self, model: Any) -> None:
        self.call(lambda: self._models.remove(model) if model in self._models else None)

    def stop(self) -> None:
        """End `run_forever` (or the background thread) once pending work is handed over."""
        self._inbox.put((None,))

    def close(self) -> None:
        """Stop the background thread and wait for it: a thread left inside torch kernels at interpreter exit
        takes the process down ("terminate called"). A later call starts a new one."""
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            self.stop()
            thread.join()

    def run_forever(self) -> None:
        """Drive the engines on the calling thread (the main thread, in `llamarun serve`) until `stop()`."""
        with self._lock:
            self._external = True
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._inbox.put((_HANDOVER,))
            thread.join()
        try:
            self._loop()
        finally:
            with self._lock:  # later calls may start a background driver again
                self._external = False
                self._driver = None

    # ----- driving -----

    def _ensure_driver(self) -> None:
        with self._lock:
            if self._external or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, name="llamarun-engines", daemon=True)
            self._thread.start()

    def _busy(self) -> bool:
        return any(m.engine.has_unfinished for m in self._models)

    def _loop(self) -> None:
        self._driver = threading.current_thread()
        while True:
            try:
                # Block only when idle; while requests run, just drain what has arrived.
                (fn,) = self._inbox.get() if not self._busy() else self._inbox.get_nowait()
            except queue.Empty:
                fn = ...
            if fn is None or fn is _HANDOVER:
                return
            if fn is not ...:
                try:
                    fn()
                except Exception:
                    log.exception("engine hub message failed")
                continue
            for model in list(self._models):
                if model.engine.has_unfinished:
                    model.step_once()


_default: EngineHub | None = None
_default_lock = threading.Lock()


def default_hub() -> EngineHub:
    """The process-wide hub every AsyncLLM uses unless given another."""
    global _default
    with _default_lock:
        if _default is None:
            _default = EngineHub()
        return _default


def close_default_hub() -> None:
    """Stop the process-wide hub's thread if one was started (at CLI exit: see EngineHub.close)."""
    with _default_lock:
        hub = _default
    if hub is not None:
        hub.close()
