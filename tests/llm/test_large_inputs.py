"""Large inputs give their tokenization's memory back, on success and on refusal (llm/large_inputs.py)."""

from __future__ import annotations

import pytest

from llamarun.chat.messages import Message
from llamarun.llm.chat_service import ChatRequest
from llamarun.llm.large_inputs import LARGE_INPUT_CHARS, input_chars, is_large
from llamarun.utils import heap


def test_input_size_counts_messages_and_text_prompts() -> None:
    half = "x" * (LARGE_INPUT_CHARS // 2)
    chat = ChatRequest("m", messages=[Message("system", half), Message("user", half)])
    assert input_chars(chat) == 2 * len(half) and is_large(chat)
    assert not is_large(ChatRequest("m", messages=[Message("user", half)]))
    ids = ChatRequest("m", prompts=[[1] * LARGE_INPUT_CHARS, "hi"])  # token ids are not tokenized again
    assert input_chars(ids) == 2 and not is_large(ids)


def test_memory_is_released_after_large_work_only_and_even_on_errors(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(heap, "release_free_memory", lambda: calls.append(1) or True)
    assert heap.then_release(False, lambda x: x + 1, 1) == 2 and calls == []
    assert heap.then_release(True, lambda x: x + 1, 1) == 2 and calls == [1]

    def refuse() -> None:
        raise ValueError("the prompt is too long")

    with pytest.raises(ValueError):
        heap.then_release(True, refuse)
    assert calls == [1, 1]
