"""Reading request bodies without letting one large body hold up every other client (issue 10, item 5).

The body is capped (`serve --max-body-bytes`, 413 beyond it): a declared Content-Length over the cap is
refused before a byte is read, and a streamed (chunked) body is cut off as soon as it passes the cap.
Decoding, validating and translating a large body (JSON parsing, the hostile-input walk, pydantic, the
route's body -> ChatRequest) runs in a worker thread, so the event loop keeps sending other clients'
tokens meanwhile (230k messages take seconds); small bodies, the common case, are parsed in place,
where a thread hop would cost more than the parse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from llamarun.llm.request_limits import DEFAULT_MAX_BODY_BYTES
from llamarun.server.errors import ApiError, check_content_type, decode_json, describe_validation

OFF_LOOP_BYTES = 64 * 1024  # larger bodies are decoded in a worker thread

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def max_body_bytes(request: Request) -> int:
    """The server's body cap (set on app.state by `create_app`)."""
    return getattr(request.app.state, "max_body_bytes", DEFAULT_MAX_BODY_BYTES)


def _too_large(limit: int) -> ApiError:
    shown = f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit} bytes"
    return ApiError(413, f"the request body is larger than the server's limit of {shown}; send a smaller "
                         "request, or start the server with a larger --max-body-bytes", code="body_too_large")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with a 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(limit)  # before reading: the client may not even have sent it yet
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected while sending the request") from None
    return b"".join(chunks)


def validate_body(raw: bytes, model: type[M]) -> M:
    """Decode `raw` as a JSON object and validate it as `model`; every failure is an ApiError (400)."""
    if not raw.strip():
        raise ApiError(400, "missing request body", code="invalid_body")
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}",
                       code="invalid_body")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        message, param = describe_validation(err.errors(include_url=False))
        raise ApiError(400, message, param=param, code="invalid_value") from None


async def parse_body(request: Request, model: type[M]) -> M:
    """Read the JSON body (application/json, or form-encoded from `curl -d`) and validate it as `model`."""
    check_content_type(request.headers.get("content-type"))
    raw = await read_body(request, max_body_bytes(request))
    if len(raw) <= OFF_LOOP_BYTES:
        return validate_body(raw, model)
    return await asyncio.to_thread(validate_body, raw, model)


async def parse_request(request: Request, model: type[M], translate: Callable[[M], T]) -> tuple[M, T]:
    """`parse_body`, then `translate` the body (into the chat service's request): both off the loop when large."""
    check_content_type(request.headers.get("content-type"))
    raw = await read_body(request, max_body_bytes(request))

    def work() -> tuple[M, T]:
        body = validate_body(raw, model)
        return body, translate(body)

    return work() if len(raw) <= OFF_LOOP_BYTES else await asyncio.to_thread(work)
