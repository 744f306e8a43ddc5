"""Serving latency: many streaming clients against a running server's OpenAI endpoint.

Each request is POST /v1/chat/completions with `stream: true` and `stream_options.include_usage`,
greedy, `max_tokens` output tokens. Time to first token is request sent -> first content chunk;
time per output token is (last content chunk - first content chunk) / (completion tokens - 1),
with the token count taken from the usage chunk (a chunk may carry more than one token).
The model may end a reply early at its end-of-turn token; the numbers use the tokens it really made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llamarun.bench.report import LevelResult
from llamarun.errors import LlamarunError

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from",
         "that", "this", "it", "be", "are", "have", "not", "or", "which", "one", "all", "were", "when",
         "there", "can", "an", "has", "more", "will", "about", "time", "people", "year", "water", "light",
         "sound", "river", "city", "music", "garden", "story", "number", "system", "market", "history"]


def synthetic_text(words: int, seed: int) -> str:
    """A prompt of `words` common words (about one token each in BPE vocabularies), reproducible by seed."""
    rng = random.Random(seed)
    return f"Request {seed}: " + " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class StreamTiming:
    """One streamed request: seconds from sending, token counts, or the error that ended it."""

    ttft: float | None = None
    last: float | None = None
    chunks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.last is None or self.completion_tokens < 2:
            return None
        return (self.last - self.ttft) / (self.completion_tokens - 1)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def stream_one(client: Any, url: str, model: str, prompt: str, max_tokens: int,
                     api_key: str | None = None) -> StreamTiming:
    """Send one streaming chat completion and time its chunks."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "temperature": 0}
    timing = StreamTiming()
    start = time.perf_counter()
    endpoint = f"{url}/v1/chat/completions"
    async with client.stream("POST", endpoint, json=body, headers=_headers(api_key)) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            timing.error = f"HTTP {resp.status_code}: {_error_message(text)}"
            return timing
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                timing.error = _error_message(json.dumps(chunk))
                break
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                now = time.perf_counter() - start
                timing.ttft = now if timing.ttft is None else timing.ttft
                timing.last = now
                timing.chunks += 1
            usage = chunk.get("usage")
            if usage:
                timing.prompt_tokens = int(usage.get("prompt_tokens", 0))
                timing.completion_tokens = int(usage.get("completion_tokens", 0))
    if not timing.completion_tokens:
        timing.completion_tokens = timing.chunks  # no usage chunk: one token per content chunk
    return timing


def _error_message(text: str) -> str:
    """The message out of an OpenAI- or Ollama-shaped JSON error body, else the body itself (cut)."""
    try:
        body = json.loads(text)
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except (ValueError, AttributeError):
        return text.strip()[:300]


async def run_level(url: str, model: str, *, concurrency: int, requests: int, prompt_tokens: int,
                    output_tokens: int, seed: int = 0, api_key: str | None = None,
                    timeout: float = 600.0) -> LevelResult:
    """`requests` streaming requests, `concurrency` clients at a time, each starting the next when done."""
    import httpx

    prompts = [synthetic_text(prompt_tokens, seed * 100_003 + i) for i in range(requests)]
    timings: list[StreamTiming] = []
    todo = iter(prompts)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for prompt in todo:  # the iterator is shared: each client takes the next prompt
            try:
                timings.append(await stream_one(client, url, model, prompt, output_tokens, api_key))
            except (httpx.HTTPError, ValueError) as err:
                timings.append(StreamTiming(error=f"{type(err).__name__}: {err}"))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(min(concurrency, requests))))
        wall = time.perf_counter() - start
    done = [t for t in timings if t.error is None]
    errors = sorted({t.error for t in timings if t.error})
    return LevelResult(
        mode="serving", concurrency=concurrency, requests=len(done),
        prompt_tokens=sum(t.prompt_tokens for t in done),
        output_tokens=sum(t.completion_tokens for t in done),
        wall_seconds=wall, ttft=[t.ttft for t in done if t.ttft is not None],
        tpot=[t.tpot for t in done if t.tpot is not None], failed=len(timings) - len(done),
        extra={"errors": errors[:5]} if errors else {},
    )


async def first_model(url: str, api_key: str | None = None, timeout: float = 30.0) -> str:
    """The first model the server lists at /v1/models (for a bench run that names none)."""
    import httpx

    async with httpx.AsyncClient(timeout=timeout) as client:
        resp = await _checked(client.get(f"{url}/v1/models", headers=_headers(api_key)), url)
    models = resp.json().get("data") or []
    if not models:
        raise LlamarunError(f"the server at {url} lists no models",
                            "name the model: llamarun bench MODEL --url ...")
    return str(models[0]["id"])


async def warm_up(url: str, model: str, api_key: str | None = None, timeout: float = 600.0) -> None:
    """One short request, untimed: the server loads the model on first use, and errors show here."""
    import httpx

    async with httpx.AsyncClient(timeout=timeout) as client:
        try:
            timing = await stream_one(client, url, model, "Hello", 2, api_key)
        except httpx.TransportError as err:
            raise _unreachable(url, err) from err
    if timing.error:
        raise LlamarunError(f"the server at {url} refused a request for '{model}': {timing.error}",
                            "check the model name (see /v1/models) and --api-key")


async def _checked(call: Any, url: str) -> Any:
    import httpx

    try:
        resp = await call
    except httpx.TransportError as err:
        raise _unreachable(url, err) from err
    if resp.status_code != 200:
        message = _error_message(resp.text)
        raise LlamarunError(f"the server at {url} answered HTTP {resp.status_code}: {message}",
                            "check the URL and --api-key")
    return resp


def _unreachable(url: str, err: Exception) -> LlamarunError:
    return LlamarunError(f"cannot reach a server at {url} ({type(err).__name__})",
                         "start one with `llamarun serve`, or use --serve to start one in this process")


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", startup_timeout: float = 60.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a daemon thread; yields its base URL.

    The socket is bound here, before the thread starts, so the port cannot be taken in between.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="auto"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="bench-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise LlamarunError("the in-process server did not start", "run `llamarun serve` and use --url")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
