"""Ollama's model endpoints: /api/tags, /api/show, /api/ps, /api/pull, /api/delete, /api/version."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llamarun import __version__
from llamarun.errors import ModelNotFoundError
from llamarun.server.errors import ApiError
from llamarun.server.ollama_schemas import CopyRequest, ModelRequest
from llamarun.server.request_body import parse_body
from llamarun.server.show_info import parameters_text, served_context, tokenizer_keys
from llamarun.server.store_info import (
    describe,
    details,
    list_entries,
    loaded_details,
    model_info,
    modelfile,
    resolve,
    rfc3339,
)
from llamarun.server.streaming import CleanupStreamingResponse, ndjson
from llamarun.store.model_defaults import ModelDefaults

router = APIRouter()


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """The pulled models."""

    def build() -> list[dict[str, Any]]:
        out = []
        for e in list_entries(request.app.state.store):
            out.append({"name": e.name, "model": e.name, "modified_at": rfc3339(e.modified_at),
                        "size": e.size, "digest": e.digest,
                        "details": details(describe(e.path, e.format), e.format)})
        return out

    return {"models": await asyncio.to_thread(build)}


@router.post("/api/show")
async def show(request: Request) -> dict[str, Any]:
    """Architecture, template, license and parameters of one model (the served context among them)."""
    req = await parse_body(request, ModelRequest)
    request.app.state.manager.local_paths.check(req.model)
    model = await asyncio.to_thread(resolve, req.model, request.app.state.store)
    info = await asyncio.to_thread(describe, model.path, model.format)
    if info is None:
        raise ModelNotFoundError(f"cannot read the metadata of '{req.model}'", "is the checkpoint complete?")
    modified = model.manifest.pulled_at if model.manifest else model.path.stat().st_mtime
    settings = ModelDefaults.from_dict(model.manifest.defaults if model.manifest else None)
    template = settings.template or info.chat_template or ""
    capabilities = ["completion"] + (["tools"] if "tools" in template else [])
    manager = request.app.state.manager
    facts = model_info(info)
    if req.verbose:
        facts |= await asyncio.to_thread(tokenizer_keys, manager, model.name, model.path, info.format)
    num_ctx = settings.parameters.get("num_ctx") if manager.get(model.name) is None else None
    parameters = settings.parameters | {"num_ctx": num_ctx or served_context(manager, model.name, info)}
    return {"license": settings.license or info.license or "", "system": settings.system or "",
            "modelfile": modelfile(model.name, model.path, info, settings),
            "parameters": parameters_text(parameters["num_ctx"], parameters), "template": template,
            "details": details(info, info.format), "model_info": facts, "capabilities": capabilities,
            "modified_at": rfc3339(modified)}


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """The models in memory, their size and when they unload."""
    manager = request.app.state.manager
    digests = {e.name: e.digest for e in await asyncio.to_thread(list_entries, request.app.state.store)}
    models = []
    for slot in manager.loaded():
        size = slot.memory_bytes
        expires = manager.expires_at(slot)
        models.append({
            "name": slot.name, "model": slot.name, "size": size,
            "digest": digests.get(slot.name) or hashlib.sha256(slot.name.encode()).hexdigest(),
            "details": loaded_details(slot.served),
            "expires_at": rfc3339(expires if expires is not None else time.time() + 10**10),
            "size_vram": size if slot.served.device.startswith("cuda") else 0,
            "context_length": slot.served.context_length,
        })
    return {"models": models}


@router.post("/api/pull")
async def pull(request: Request) -> Response:
    """Fetch a model into the store; streams progress lines unless `stream: false`."""
    from llamarun.store.resolve import source_for

    req = await parse_body(request, ModelRequest)
    store, pull_fn = request.app.state.store, request.app.state.pull
    if source_for(req.model) is None:  # unknown names and local paths: pull_model says why, no network
        try:
            await asyncio.to_thread(pull_fn, req.model, store=store)
        except (ValueError, OSError, RuntimeError) as err:  # "~nosuchuser", NUL bytes
            raise ModelNotFoundError(f"model '{req.model[:200]}' not found ({err})",
                                     "see `llamarun list`") from None
    if not req.stream:
        await asyncio.to_thread(pull_fn, req.model, store=store)
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        yield ndjson({"status": "pulling manifest"})
        try:
            manifest = await asyncio.to_thread(pull_fn, req.model, store=store)
        except Exception as err:
            yield ndjson({"error": str(err)})
            return
        digest = next((f.sha256 for f in manifest.files if f.sha256), None) or hashlib.sha256(
            manifest.ref.encode()).hexdigest()
        yield ndjson({"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}",
                      "total": manifest.size, "completed": manifest.size})
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield ndjson({"status": status})

    body = lines()
    return CleanupStreamingResponse(body, cleanup=body.aclose, media_type="application/x-ndjson")


@router.delete("/api/delete")
async def delete(request: Request) -> Response:
    """Remove a model from the store (unloading it first)."""
    from llamarun.store.catalog import canonical_ref, split_ref

    req = await parse_body(request, ModelRequest)
    store = request.app.state.store
    name, tag = split_ref(canonical_ref(req.model))
    if await asyncio.to_thread(store.get, name, tag) is None:
        raise ModelNotFoundError(f"model '{req.model}' not found", "see `llamarun list`")
    with contextlib.suppress(ModelNotFoundError):
        await request.app.state.manager.unload(req.model, force=True)  # the served model too: its files go
    await asyncio.to_thread(store.remove, name, tag)
    return Response(status_code=200)


@router.post("/api/copy")
async def copy(request: Request) -> Response:
    """Give a pulled model a second name (its files are shared, not duplicated, where the file system allows)."""
    from llamarun.store.catalog import canonical_ref, split_ref

    req = await parse_body(request, CopyRequest)
    store = request.app.state.store
    try:
        destination = split_ref(canonical_ref(req.destination))
        store.entry_dir(*destination)  # a name the store cannot hold ('..', odd characters) is the client's error
    except (ValueError, ModelNotFoundError) as err:
        raise ApiError(400, f"invalid destination name: {err}", param="destination") from None
    await asyncio.to_thread(store.copy, *split_ref(canonical_ref(req.source)), *destination)
    return Response(status_code=200)


@router.post("/api/push")
async def push(request: Request) -> Response:
    """Ollama pushes to its registry; llamarun has none, so it says so instead of pretending."""
    await parse_body(request, ModelRequest)
    raise ApiError(501, "push is not supported: llamarun has no model registry to push to "
                        "(copy the store folder, or publish to the Hugging Face Hub)")
