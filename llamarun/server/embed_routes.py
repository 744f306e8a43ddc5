"""Embedding endpoints: Ollama's /api/embed and legacy /api/embeddings, OpenAI's /v1/embeddings.

Thin over `ServedModel.embed` (llm/embeddings.py): each route leases the model from the manager,
turns its inputs into token ids (llm/embed_inputs.py, which also truncates and refuses), and answers
in its API's shape. Every vector is L2-normalized, the legacy route's too (Ollama leaves that one raw).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from llamarun.llm.embed_inputs import EmbedInput, check_dimensions, check_input_count, embedding_ids
from llamarun.server.errors import ApiError
from llamarun.server.ollama_schemas import Options, parse_keep_alive
from llamarun.server.request_body import parse_body

router = APIRouter()
Dimensions = Annotated[int, Field(ge=1, le=2**31)]
TokenId = Annotated[int, Field(ge=0, le=2**31)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=4096)


class OllamaEmbedBody(_Body):
    """POST /api/embed."""

    input: str | list[str] | None = None
    truncate: bool = True
    dimensions: Dimensions | None = None
    keep_alive: float | str | None = None
    options: Options | None = None


class OllamaEmbeddingsBody(_Body):
    """POST /api/embeddings (legacy: one prompt, one vector)."""

    prompt: str | None = None
    keep_alive: float | str | None = None
    options: Options | None = None


class OpenAIEmbeddingsBody(_Body):
    """POST /v1/embeddings."""

    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions | None = None
    user: str | None = None


@dataclass
class Embedded:
    """Vectors and what it took to make them."""

    vectors: list[list[float]]
    prompt_tokens: int
    load_seconds: float
    seconds: float


async def embed(request: Request, model: str, inputs: Sequence[EmbedInput], *, truncate: bool = True,
                dimensions: int | None = None, num_ctx: int | None = None,
                keep_alive: float | None = None) -> Embedded:
    """Lease `model` and embed `inputs` (none: only load it); user errors raise before any model work."""
    t0 = time.perf_counter()
    check_input_count(len(inputs))
    if num_ctx is not None and num_ctx < 1:
        raise ApiError(400, f"num_ctx={num_ctx} is below 1", param="options.num_ctx")
    manager = request.app.state.manager
    lease = await manager.acquire(model, num_ctx=num_ctx, keep_alive=keep_alive)
    try:
        served = lease.served
        check_dimensions(dimensions, served.config.hidden_size)
        ids = embedding_ids(inputs, served.tokenizer, served.context_length, truncate=truncate)
        vectors = await served.embed(ids, dimensions=dimensions) if ids else []
    finally:
        manager.release(lease)
    return Embedded(vectors, sum(map(len, ids)), lease.load_seconds, time.perf_counter() - t0)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _num_ctx(options: Options | None) -> int | None:
    return options.num_ctx if options is not None else None


@router.post("/api/embed")
async def ollama_embed(request: Request) -> dict[str, Any]:
    """Embed one text or a list of them; an empty `input` only loads the model, as in Ollama."""
    body = await parse_body(request, OllamaEmbedBody)
    texts = [body.input] if isinstance(body.input, str) else body.input or []
    inputs = [] if texts == [""] else texts  # "" only loads, as in Ollama
    done = await embed(request, body.model, inputs, truncate=body.truncate, dimensions=body.dimensions,
                       num_ctx=_num_ctx(body.options), keep_alive=parse_keep_alive(body.keep_alive))
    return {"model": body.model, "embeddings": done.vectors, "total_duration": _ns(done.seconds),
            "load_duration": _ns(done.load_seconds), "prompt_eval_count": done.prompt_tokens}


@router.post("/api/embeddings")
async def ollama_embeddings(request: Request) -> dict[str, Any]:
    """The legacy route: `prompt` in, `embedding` out (empty for an empty prompt, as in Ollama)."""
    body = await parse_body(request, OllamaEmbeddingsBody)
    done = await embed(request, body.model, [body.prompt] if body.prompt else [],
                       num_ctx=_num_ctx(body.options), keep_alive=parse_keep_alive(body.keep_alive))
    return {"embedding": done.vectors[0] if done.vectors else []}


@router.post("/v1/embeddings")
async def openai_embeddings(request: Request) -> dict[str, Any]:
    """OpenAI embeddings: text, texts, token ids or lists of token ids; floats or base64 float32."""
    body = await parse_body(request, OpenAIEmbeddingsBody)
    inputs = _openai_inputs(body.input)
    done = await embed(request, body.model, inputs, dimensions=body.dimensions)
    encode = _base64 if body.encoding_format == "base64" else list
    data = [{"object": "embedding", "index": i, "embedding": encode(vec)} for i, vec in enumerate(done.vectors)]
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens}}


def _openai_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[EmbedInput]:
    """One list of inputs; OpenAI refuses empty ones rather than embedding nothing."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        value = [value]  # one text, or one token list
    if not value or any(len(item) == 0 for item in value):
        raise ApiError(400, "'input' must not be empty, nor hold an empty string or token list",
                       param="input", code="invalid_value")
    return list(value)


def _base64(vector: list[float]) -> str:
    """Little-endian float32 bytes in base64: what OpenAI sends, and its client decodes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
