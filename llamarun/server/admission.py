"""Admission: how many requests may wait for the engines (`serve --max-queue`), and draining on SIGTERM.

Every request that asks for model work (generate, chat, completions, embeddings) counts from its
first byte until its last streamed byte. Beyond `max_queue` of them a new one is answered 429 with
Retry-After at once, before its body is read, so a flood costs the server almost nothing and the
requests already admitted keep their pace. Inside the engines requests are admitted first come, first
served (engine/scheduler.py), and one request holds at most `--max-generations` of them.

While draining (`llamarun serve` got SIGTERM) every new request gets a 503 with Retry-After, and
`wait_idle` lets the server finish the requests in flight before it exits. Those still running when
the grace period ends are ended by `cut_streams`: a stream gets a last error event in its own format
(an NDJSON `{"error"}` line or an SSE `data:` event) and a proper end, instead of a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamarun.llm.request_limits import DEFAULT_MAX_QUEUE
from llamarun.server.errors import error_response

MODEL_WORK = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
                        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})
RETRY_AFTER_BUSY = "1"
RETRY_AFTER_DRAINING = "5"
CUT_MESSAGE = "the server is shutting down and stopped this request before it finished"


class Admission:
    """The server's count of requests in flight, its queue cap, and whether it is draining.

    Thread-safe: the signal handler's drain thread reads it while the event loop updates it.
    """

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue = max_queue
        self.queued = 0  # model-work requests in flight
        self.in_flight = 0  # every request in flight, for draining
        self.draining = False
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cut: asyncio.Event | None = None  # set on the server's loop: end what still runs

    def cut_streams(self) -> None:
        """End every request still in flight now (from any thread): streams get a last error event."""
        if self._loop is not None and self._cut is not None:
            self._loop.call_soon_threadsafe(self._cut.set)

    def _cut_event(self) -> asyncio.Event:
        if self._cut is None:
            self._loop, self._cut = asyncio.get_running_loop(), asyncio.Event()
        return self._cut

    def start_draining(self) -> None:
        """Refuse new requests from now on (503); those in flight go on."""
        self.draining = True

    def wait_idle(self, timeout: float, poll: float = 0.05) -> bool:
        """Block until no request is in flight or `timeout` seconds pass; True if idle."""
        deadline = time.monotonic() + timeout
        while self.in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
        return True

    def enter(self, work: bool) -> bool:
        """Count a new request in (`work`: it asks for model work); False if the queue is full."""
        with self._lock:
            if work and self.queued >= self.max_queue:
                return False
            self.in_flight += 1
            self.queued += work
            return True

    def leave(self, work: bool) -> None:
        """Count a finished request out."""
        with self._lock:
            self.in_flight -= 1
            self.queued -= work


class AdmissionGate:
    """ASGI middleware applying an Admission to every HTTP request."""

    def __init__(self, app: ASGIApp, *, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.admission.draining:
            response = error_response(path, 503, "the server is shutting down; retry on another server or "
                                      "once it is back", code="server_draining",
                                      headers={"Retry-After": RETRY_AFTER_DRAINING, "Connection": "close"})
            await response(scope, receive, send)
            return
        work = scope["method"] == "POST" and path in MODEL_WORK
        if not self.admission.enter(work):
            response = error_response(path, 429, f"the server is busy: {self.admission.max_queue} requests are "
                                      "already waiting or running; retry shortly", code="server_busy",
                                      headers={"Retry-After": RETRY_AFTER_BUSY})
            await response(scope, receive, send)
            return
        try:
            await self._run_until_cut(scope, receive, send)
        finally:
            self.admission.leave(work)

    async def _run_until_cut(self, scope: Scope, receive: Receive, send: Send) -> None:
        started: list[Message] = []

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.append(message)
            await send(message)

        app = asyncio.ensure_future(self.app(scope, receive, tracked))
        cut = asyncio.ensure_future(self.admission._cut_event().wait())
        try:
            await asyncio.wait({app, cut}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # uvicorn cancelled us (its own shutdown): the request goes with us
            app.cancel()
            raise
        finally:
            cut.cancel()
        if app.done():
            app.result()  # its exception, if any, goes on up as before
            return
        app.cancel()  # the response's own cleanup still releases the model and the engine request
        with contextlib.suppress(BaseException):
            await app
        if not started:
            await error_response(scope["path"], 503, CUT_MESSAGE, code="server_draining")(scope, receive, send)
            return
        kind = dict(started[0].get("headers", ())).get(b"content-type", b"")
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "http.response.body", "body": _error_event(kind), "more_body": False})


def _error_event(content_type: bytes) -> bytes:
    """A last event telling a streaming client why its stream ends, in the stream's own format."""
    if content_type.startswith(b"text/event-stream"):
        body = {"error": {"message": CUT_MESSAGE, "type": "server_error", "param": None, "code": "server_draining"}}
        return b"data: " + json.dumps(body).encode() + b"\n\n"
    if content_type.startswith(b"application/x-ndjson"):
        return json.dumps({"error": CUT_MESSAGE}).encode() + b"\n"
    return b""
