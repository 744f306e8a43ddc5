"""Ollama's blob endpoints: HEAD and POST /api/blobs/sha256:<hex> (see store/blobs.py).

HEAD answers 200 when the store holds the blob, 404 when not. POST streams the body to disk (never
holding it in memory), checks its sha256 against the digest in the path, and answers 201; a mismatch
is a 400 and leaves nothing behind. Writes and hashing run in a worker thread a few MiB at a time, so
a multi-gigabyte upload does not stall the event loop.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from llamarun.errors import RequestError
from llamarun.server.errors import ApiError
from llamarun.store.blobs import BlobStore

router = APIRouter()
WRITE_BYTES = 4 * 2**20  # gather this much before one write: fewer thread hops than one per socket read


def blob_store(request: Request) -> BlobStore:
    return BlobStore(request.app.state.store.root)


def _checked(blobs: BlobStore, digest: str) -> str:
    try:
        blobs.path(digest)
    except RequestError as err:
        raise ApiError(400, err.message, param="digest", code=err.code) from None
    return digest


@router.head("/api/blobs/{digest}")
async def has_blob(request: Request, digest: str) -> Response:
    blobs = blob_store(request)
    found = await asyncio.to_thread(blobs.has, _checked(blobs, digest))
    return Response(status_code=200 if found else 404)


@router.post("/api/blobs/{digest}")
async def upload_blob(request: Request, digest: str) -> Response:
    blobs = blob_store(request)
    upload = await asyncio.to_thread(blobs.upload, _checked(blobs, digest))
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= WRITE_BYTES:
                await asyncio.to_thread(upload.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await asyncio.to_thread(upload.write, b"".join(pending))
        await asyncio.to_thread(upload.finish)
    except ClientDisconnect:
        await asyncio.to_thread(upload.abort)
        raise ApiError(400, "the client disconnected during the upload; nothing was stored") from None
    except RequestError as err:
        raise ApiError(400, err.message, param="digest", code=err.code) from None
    except BaseException:
        await asyncio.shield(asyncio.to_thread(upload.abort))
        raise
    return Response(status_code=201)
