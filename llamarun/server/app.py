"""The FastAPI application: Ollama and OpenAI routes over one ModelManager, plus /health, /metrics and /.

`create_app(manager)` builds it; `llamarun serve` runs it with uvicorn. An ASGI gate in front of
every route checks Host and Origin (server/origins.py: CORS and the DNS-rebinding guard), answers
CORS preflights, checks the API key (Bearer) when one is set and counts requests for /metrics; it is
plain ASGI rather than an HTTP middleware so that streaming responses and client disconnects pass
through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamarun import __version__
from llamarun.llm.chat_service import ChatRequest, ChatService
from llamarun.llm.model_settings import store_settings
from llamarun.llm.request_limits import DEFAULT_MAX_BODY_BYTES
from llamarun.llm.served import ServedModel
from llamarun.llm.text_stream import Completion
from llamarun.safety.pipeline import GuardPipeline
from llamarun.server import (
    blob_routes,
    create_routes,
    embed_routes,
    moderation_routes,
    ollama_model_routes,
    ollama_routes,
    openai_routes,
    responses_routes,
)
from llamarun.server.admission import Admission, AdmissionGate
from llamarun.server.errors import error_response, install_error_handlers
from llamarun.server.metrics import CONTENT_TYPE, ServerMetrics
from llamarun.server.model_manager import FOREVER, ModelManager
from llamarun.server.origins import OriginPolicy, cors_headers, is_loopback, preflight_headers

log = logging.getLogger("llamarun.server")
STATIC = Path(__file__).parent / "static"
ROUTERS = (ollama_routes.router, ollama_model_routes.router, openai_routes.router, embed_routes.router,
           blob_routes.router, create_routes.router, responses_routes.router, moderation_routes.router)
OPEN_PATHS = frozenset({"/health", "/"})  # the chat page itself holds no data; it asks for the key


def create_app(manager: ModelManager, *, api_key: str | None = None, store: Any = None,
               pull: Callable[..., Any] | None = None, metrics: ServerMetrics | None = None,
               preload: str | None = None, preload_keep_alive: float = FOREVER, reap_interval: float = 1.0,
               bind_host: str | None = None, origins: Sequence[str] = (),
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, admission: Admission | None = None,
               guards: GuardPipeline | None = None) -> FastAPI:
    """The server application.

    manager: loads and unloads models; api_key: required as `Authorization: Bearer KEY` when set;
    store: the ModelStore listed by /api/tags (default: LLAMARUN_HOME); pull: the pull function
    (default `llamarun.store.resolve.pull_model`); preload: a model loaded at start-up and pinned, kept
    for preload_keep_alive seconds after its last use (negative: forever) whatever clients ask;
    bind_host: the address the server listens on (a loopback one turns on the Host check); origins:
    browser origins allowed besides the local ones (exact or `*` globs); max_body_bytes: larger
    request bodies get a 413; admission: the queue cap and drain state (server/admission.py); guards: the
    safety guards around every request and behind /api/moderate and /v1/moderations (safety/pipeline.py).
    """
    from llamarun.safety.screening import RequestGuard
    from llamarun.server.guard_metrics import GuardMetrics
    from llamarun.store.home import ModelStore
    from llamarun.store.resolve import pull_model

    metrics = metrics or ServerMetrics()
    if manager.on_load is None:
        manager.on_load = metrics.model_loaded

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preload:
            await manager.preload(preload, keep_alive=preload_keep_alive)
        if guards is not None:
            await guards.warm_up()  # Llama Guard's model loads now, beside the served one
        reaper = asyncio.ensure_future(manager.reap_forever(reap_interval))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(BaseException):
                await reaper
            await manager.close()

    app = FastAPI(title="llamarun", version=__version__, lifespan=lifespan, docs_url="/docs", redoc_url=None)
    def finished(model: ServedModel, req: ChatRequest, result: Completion) -> None:
        stats = result.stats if result.finish_reason is not None else None  # None: cut off before it finished
        metrics.generation_finished(model.name, req.api, result.finish_reason, stats)

    app.state.manager = manager
    app.state.store = store if store is not None else ModelStore()
    guards = guards if guards else None  # a pipeline whose guards are all off is no pipeline
    if guards is not None:
        guards.observers.append(GuardMetrics(metrics.registry).observe)
    app.state.guards = guards
    app.state.service = ChatService(manager, on_finish=finished, settings=store_settings(app.state.store),
                                    guard=RequestGuard(guards) if guards is not None else None)
    app.state.metrics = metrics
    app.state.pull = pull or pull_model
    app.state.max_body_bytes = max_body_bytes
    app.state.admission = admission = admission or Admission()
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models_loaded": len(manager.loaded())}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        models = []
        for slot in manager.loaded():
            try:
                models.append((slot.name, slot.served.metrics(), slot.memory_bytes))
            except Exception:  # a model stopping right now has no engine to ask
                log.debug("no metrics from %s", slot.name, exc_info=True)
        return PlainTextResponse(metrics.render(models), media_type=CONTENT_TYPE)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index(request: Request) -> Response:
        # Browsers get the chat page; other clients get Ollama's own answer, which tools (and
        # Ollama's clients) read to detect a running server.
        page = STATIC / "index.html"
        if "text/html" in request.headers.get("accept", "") and page.is_file():
            return FileResponse(page, media_type="text/html")
        return PlainTextResponse("Ollama is running")

    known = {getattr(r, "path", "") for router in (app, *ROUTERS) for r in router.routes}
    policy = OriginPolicy(origins, check_host=is_loopback(bind_host))
    app.add_middleware(AdmissionGate, admission=admission)  # inside the gate: foreign pages never count
    app.add_middleware(_Gate, api_key=api_key, metrics=metrics, known=frozenset(known), policy=policy)
    return app


class _Gate:
    """Host/Origin checks, CORS, API-key check and request counting, in front of every route."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, metrics: ServerMetrics,
                 known: frozenset[str], policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy
        self.api_key = api_key.encode() if api_key else None
        self.metrics = metrics
        self.known = known

    def _route(self, path: str) -> str:
        if path in self.known:
            return path
        if path.startswith("/api/blobs/"):
            return "/api/blobs/{digest}"
        return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key or b"")
        return False

    def _refusal(self, origin: str | None, host: str | None) -> str | None:
        """Why a request is refused (403), or None."""
        if not self.policy.host_allowed(host):
            return (f"Host '{host[:100] if host else ''}' is not allowed: this server listens on loopback and "
                    "answers only to localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding)")
        if origin is not None and not self.policy.origin_allowed(origin, host):
            return (f"Origin '{origin[:200]}' is not allowed; start the server with --origins (or set "
                    "LLAMARUN_ORIGINS) to allow it")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        status = 500
        t0 = time.perf_counter()
        headers = {name: value.decode("latin-1") for name, value in scope.get("headers", ())}
        origin, host = headers.get(b"origin"), headers.get(b"host")
        refusal = self._refusal(origin, host)
        share = origin is not None and refusal is None  # let the allowed page read the answer

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if share:
                    message = {**message, "headers": [*message.get("headers", ()), *cors_headers(origin)]}
            await send(message)

        self.metrics.request_started()
        try:
            if refusal is not None:  # before any work: a foreign page must not start a pull or a generation
                await error_response(path, 403, refusal)(scope, receive, send_status)
                return
            if method == "OPTIONS" and origin is not None and b"access-control-request-method" in headers:
                response = Response(status_code=204, headers=preflight_headers(
                    origin, headers.get(b"access-control-request-headers")))
                await response(scope, receive, send)  # not send_status: these headers are complete
                status = 204
                return
            if self.api_key is not None and path not in OPEN_PATHS and not self._authorized(scope):
                message = ("Incorrect or missing API key: send 'Authorization: Bearer KEY' with the key "
                           "given to llamarun serve --api-key")
                response = error_response(path, 401, message, code="invalid_api_key",
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request_finished(method, self._route(path), status, time.perf_counter() - t0)
