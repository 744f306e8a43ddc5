"""Pieces of OpenAI response objects: log-probabilities, finish reasons, usage."""

from __future__ import annotations

from typing import Any


def _token_bytes(llm: Any, token_id: int) -> list[int] | None:
    try:
        return list(llm.tokenizer.token_bytes(token_id))
    except Exception:
        return None


def chat_logprobs(llm: Any, items: list[Any]) -> list[dict[str, Any]]:
    """`logprobs.content` of a chat choice: each token, its log-probability, bytes and top alternatives."""
    return [{"token": lp.text, "logprob": lp.logprob, "bytes": _token_bytes(llm, lp.token_id),
             "top_logprobs": [{"token": text, "logprob": value, "bytes": _token_bytes(llm, tid)}
                              for tid, text, value in lp.top]}
            for lp in items]


def completion_logprobs(items: list[Any], offset: int) -> dict[str, Any]:
    """The legacy completions `logprobs` object; `offset` is where these tokens start in the choice text."""
    offsets = []
    for lp in items:
        offsets.append(offset)
        offset += len(lp.text)
    return {"tokens": [lp.text for lp in items], "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{text: value for _tid, text, value in lp.top} for lp in items],
            "text_offset": offsets}


def finish_reason(x: Any) -> str:
    """OpenAI's finish reason for a finished chunk or result: "length" or "stop"."""
    return "length" if x.finish_reason == "length" else "stop"


def usage(prompts: list[list[int]], outputs: list[Any], n: int) -> dict[str, Any]:
    """Token counts: each distinct prompt once (n choices share one), every choice's output."""
    prompt_tokens = sum(len(prompts[k]) for k in range(0, len(prompts), n))
    completion = cached = 0
    for k, out in enumerate(outputs):
        stats = out.stats
        completion += stats.generated_tokens if stats is not None else len(getattr(out, "token_ids", []))
        if stats is not None and k % n == 0:
            cached += stats.cached_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": cached}}
