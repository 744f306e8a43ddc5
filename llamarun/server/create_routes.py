"""POST /api/create: a new store entry from a model or uploaded blobs, with its own settings.

The request is checked whole first (server/create_request.py), so a bad one is a plain 4xx. Then the
entry is built (store/create.py) while status lines stream as Ollama's do (`{"status": ...}` per
step, `{"status": "success"}` last; an error after the first line is an `{"error": ...}` line).
With `stream: false` the answer is the final status alone. A model loaded under the same name is
unloaded, so the next request runs what was just created.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamarun.errors import ModelNotFoundError
from llamarun.server.create_request import CreateBody, CreatePlan, plan_create
from llamarun.server.request_body import parse_body
from llamarun.server.store_info import resolve
from llamarun.server.streaming import CleanupStreamingResponse, ndjson
from llamarun.store.home import Manifest, ModelStore

router = APIRouter()


def _statuses(plan: CreatePlan) -> list[str]:
    """The steps Ollama's clients show while a model is created, for this plan."""
    if plan.files is not None:
        out = [f"using existing layer sha256:{p.name.removeprefix('sha256-')}" for p in plan.files.values()]
    else:
        out = [f"using existing model {plan.base.ref if plan.base else plan.base_path}"]
    d = plan.defaults
    for what, present in (("template", d.template), ("system", d.system), ("params", d.parameters),
                          ("messages", d.messages), ("license", d.license)):
        if present:
            out.append(f"creating {what} layer")
    return [*out, "writing manifest"]


def _build(store: ModelStore, plan: CreatePlan) -> Manifest:
    from llamarun.store.create import create_from_blobs, create_from_model

    if plan.files is not None:
        return create_from_blobs(store, plan.name, plan.tag, plan.files, plan.defaults)
    return create_from_model(store, plan.name, plan.tag, plan.base, plan.base_path, plan.defaults)


@router.post("/api/create")
async def create(request: Request) -> Response:
    """Create `model` from `from` or `files` (or a legacy `modelfile`)."""
    body = await parse_body(request, CreateBody)
    store, manager = request.app.state.store, request.app.state.manager

    def resolve_base(name: str) -> Any:  # a ResolvedModel
        manager.local_paths.check(name)
        return resolve(name, store)

    plan = await asyncio.to_thread(plan_create, body, store, resolve_base)

    async def build() -> Manifest:
        manifest = await asyncio.to_thread(_build, store, plan)
        with contextlib.suppress(ModelNotFoundError):
            await manager.unload(plan.ref, force=True)  # a model loaded under this name runs the old entry
        return manifest

    if not body.stream:
        await build()
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        for status in _statuses(plan):
            yield ndjson({"status": status})
        try:
            await build()
        except Exception as err:
            yield ndjson({"error": str(err)})
            return
        yield ndjson({"status": "success"})

    body_iter = lines()
    return CleanupStreamingResponse(body_iter, cleanup=body_iter.aclose, media_type="application/x-ndjson")
