"""Prompts to token ids for both APIs, with the checks every request needs before it reaches the engine."""

from __future__ import annotations

import asyncio
from typing import Any

from llamarun.errors import LlamarunError
from llamarun.sampling.params import SamplingParams
from llamarun.server.errors import ApiError


async def chat_prompt_ids(llm: Any, messages: list[dict[str, Any]], tools: list[dict] | None = None,
                          *, param: str = "messages") -> list[int]:
    """Apply the model's chat template and tokenize (in a worker thread: long prompts take a while)."""
    try:
        return await asyncio.to_thread(llm.chat_ids, messages, tools)
    except LlamarunError:
        raise
    except Exception as err:
        raise ApiError(400, f"the chat template cannot render these messages: {err}", param=param) from None


async def text_prompt_ids(llm: Any, prompt: str) -> list[int]:
    """Tokenize a raw completion prompt."""
    return await asyncio.to_thread(llm.prompt_ids, prompt)


def check_token_ids(llm: Any, ids: list[int], param: str) -> None:
    """Token ids given by a client must exist in the vocabulary."""
    vocab = llm.tokenizer.vocab_size
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise ApiError(400, f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param)


def check_prompt(llm: Any, ids: list[int], param: str) -> None:
    """An empty prompt or one that leaves no room to generate is the client's error."""
    if not ids:
        raise ApiError(400, "the prompt is empty", param=param)
    ctx = llm.context_length
    if len(ids) >= ctx:
        raise ApiError(400, f"the prompt has {len(ids)} tokens, but the context holds {ctx}; "
                            "shorten the prompt or load the model with a larger context",
                       param=param, code="context_length_exceeded")


def fit_max_tokens(llm: Any, ids: list[int], params: SamplingParams, *, strict: bool, param: str
                   ) -> SamplingParams:
    """Limit generation to the room left in the context.

    strict (OpenAI): asking for more than fits is an error, as OpenAI answers it. Otherwise (Ollama)
    the limit is silently lowered, and the answer ends with done_reason "length".
    """
    room = llm.context_length - len(ids)
    if params.max_tokens is None:
        return params.replace(max_tokens=room)
    if params.max_tokens <= room:
        return params
    if strict:
        raise ApiError(400, f"this model's context holds {llm.context_length} tokens, but {len(ids)} are in "
                            f"the prompt and {params.max_tokens} were asked for in the completion; "
                            "lower the maximum tokens or shorten the prompt",
                       param=param, code="context_length_exceeded")
    return params.replace(max_tokens=room)
